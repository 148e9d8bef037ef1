"""The one job skeleton: a job declares its methods (each beside its control) and optional stages; this runs them."""

from __future__ import annotations

import copy
import dataclasses
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from warmstart._run_dir import check_out_dir, job_lock
from warmstart.config import save_config
from warmstart.evaluation import evaluate
from warmstart.jobs import report
from warmstart.errors import ConfigError
from warmstart.jobs.stages import recorded_job, rerun_command
from warmstart.optim import check_settings
from warmstart.selection import choose, sample_count, summarise


@dataclasses.dataclass
class Trained:
    """What a method's training gives the runner.

    Attributes:
        model: the trained network.
        history: its per-epoch metrics (``val_accuracy`` draws the curves).
        test: test metrics when the method measured them itself (on its own test set); otherwise the
            runner measures ``model`` on the job's test set.
        val: validation metrics, likewise (``{}``: none apply, as for a model measured on another task).
        facts: more of the row (the choice, the optimizer steps, the teacher, ...).
        weights: the weights file the method wrote (``None``: none).
    """

    model: nn.Module
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    test: dict[str, float] | None = None
    val: dict[str, float] | None = None
    facts: dict[str, Any] = dataclasses.field(default_factory=dict)
    weights: Path | None = None


@dataclasses.dataclass
class Method:
    """One row of a job's table: a way to train, run once per seed.

    Attributes:
        name: its key in ``results.json``.
        label: its name in the report.
        train: ``train(run, seed)``: the trained network (``None``: the row does not apply to this run).
        control: the row it is measured against, seed by seed (the same training without what it tests); of
            several, the first the run has.
        teacher: a candidate for the teacher of the students (and the network a compression stage takes).
        student: trains after the teacher is chosen (``run.teacher``).
    """

    name: str
    label: str
    train: Callable[[JobRun, int], Trained | None]
    control: str | tuple[str, ...] | None = None
    teacher: bool = False
    student: bool = False


class JobRun:
    """One run of a job: its folder and data, a row per method and seed, the teacher, the compressed models.

    Attributes:
        job: the job's config.
        data: the job's data, for its methods and stages.
        out: the run folder.
        seeds: the seeds every method runs with.
        rows: per method, one row per seed (test and validation accuracy, parameters, seconds, facts).
        trained: the first seed's trained networks, by method.
        teacher: the method whose network teaches the students (chosen on validation).
        compression: rows of measured networks (accuracy, parameters, size, latency).
        exported: the files a compression stage wrote for serving, and how they ran.
    """

    def __init__(self, job: Any, data: Any, methods: Sequence[Method], test: Any, val: Any, seeds: Sequence[int],
                 progress: bool, default_teacher: str | None = None):
        self.job, self.data, self.methods, self.test, self.val = job, data, list(methods), test, val
        self.progress = progress
        self.out, self.seeds, self.default_teacher = Path(job.out_dir).expanduser(), list(seeds), default_teacher
        self.rows: dict[str, list[dict[str, Any]]] = {}
        self.curves: dict[str, list[dict[str, Any]]] = {}
        self.trained: dict[str, Trained] = {}
        self.teacher: str | None = None
        self.compression: dict[str, dict[str, Any]] = {}
        self.exported: dict[str, dict[str, Any]] = {}
        self.notes: list[str] = []

    def settings(self, stage: Any, folder: str, seed: int | None = None, **changes: Any) -> dict[str, Any]:
        """A stage's ``config`` (its trainer settings writing into ``out_dir/folder``, with the job's permission to
        overwrite), ``optimizer`` and ``scheduler`` (copies), as a Trainer takes them."""
        seed = seed if seed is not None else self.job.trainer.seed if stage.trainer.seed is None else stage.trainer.seed
        config = dataclasses.replace(stage.trainer, out_dir=str(self.out / folder), seed=seed,
                                     progress=stage.trainer.progress and self.progress,
                                     overwrite=stage.trainer.overwrite or self.job.trainer.overwrite, **changes)
        return {"config": config, "optimizer": copy.deepcopy(stage.optimizer), "scheduler": copy.deepcopy(stage.scheduler)}

    def trainer(self, cls: type, model: nn.Module, stage: Any, folder: str, seed: int, **options: Any) -> Any:
        """A ``cls`` trainer of ``model`` with :meth:`settings`, the whole job recorded in its checkpoints."""
        trainer = cls(model, **self.settings(stage, folder, seed), **options)
        trainer.job_config = recorded_job(self.job)
        return trainer

    def heading(self, text: str) -> None:
        """A section line in the output (only with progress)."""
        if self.progress:
            print(f"\n== {text} ==", flush=True)

    def train(self, students: bool) -> None:
        """Every method (or every student), seed by seed, each row recorded as it finishes."""
        for seed in self.seeds:
            for method in self.methods:
                if method.student == students:
                    self.heading(f"{method.label}" + (f" (seed {seed})" if len(self.seeds) > 1 else ""))
                    started = time.perf_counter()
                    trained = method.train(self, seed)
                    if trained is not None:
                        self.record(method, seed, trained, time.perf_counter() - started)

    def record(self, method: Method, seed: int, trained: Trained, seconds: float) -> None:
        """Measure ``trained`` (unless it measured itself) and keep its row."""
        model = trained.model
        test = trained.test if trained.test is not None else evaluate(model, self.test)
        val = trained.val if trained.val is not None else None if self.val is None else evaluate(model, self.val)
        row = {"seed": seed, "accuracy": round(test["accuracy"], 6), "seconds": round(seconds, 2),
               "params": sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n),
               "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad), **trained.facts}
        if val:
            row["val_accuracy"] = round(val["accuracy"], 6)
        self.rows.setdefault(method.name, []).append(row)
        if seed == self.seeds[0]:
            self.curves[method.name], self.trained[method.name] = trained.history, trained
        shown = f", validation {100 * val['accuracy']:.1f}%" if val else ""
        print(f"[warmstart run] {method.label}" + (f" (seed {seed})" if len(self.seeds) > 1 else "")
              + f": test accuracy {100 * test['accuracy']:.1f}%{shown} ({seconds:.1f} s)", flush=True)

    def choose_teacher(self) -> str | None:
        """The teacher among the first seed's candidates, through :func:`warmstart.selection.choose`.

        The job's default teacher is kept unless another candidate's validation accuracy beats it
        beyond chance on the validation count (a choice among equals would teach the noise of one split).
        """
        candidates = [m.name for m in self.methods if m.teacher and m.name in self.trained]
        if not candidates:
            return None
        default = self.default_teacher if self.default_teacher in candidates else candidates[0]
        if self.val is not None:
            count = sample_count(self.val)
            scores = {name: summarise([self.rows[name][0]["val_accuracy"]], [count]) for name in candidates}
            self.teacher = choose(scores, default)
        else:
            self.teacher = default
        val = {name: self.rows[name][0].get("val_accuracy", 0.0) for name in candidates}
        best = max(candidates, key=val.get)
        self.notes.append(f"The teacher is {self.label(self.teacher)}" + (
            " (the best on validation)" if val[self.teacher] >= val[best] else
            f" (the job's default: {self.label(best)} scored {100 * val[best]:.1f}% on validation against "
            f"{100 * val[self.teacher]:.1f}%, a difference chance allows on {sample_count(self.val)} images)"))
        return self.teacher

    def label(self, name: str) -> str:
        """A method's label."""
        return next((m.label for m in self.methods if m.name == name), name)

    def measure(self, label: str, model: nn.Module, loader: Any, example: torch.Tensor, params: int | None = None,
                **facts: Any) -> dict[str, Any]:
        """A row of the compression table: test accuracy, parameters, tensor bytes, latency of ``example``."""
        from warmstart.compress import count_parameters, measure_latency, tensor_bytes

        row = {"accuracy": round(evaluate(model, loader)["accuracy"], 6),
               "params": params or count_parameters(model), "bytes": tensor_bytes(model),
               "latency_ms": round(1e3 * measure_latency(model, example), 3), "batch": len(example), **facts}
        self.compression[label] = row
        print(f"[warmstart] {label}: test accuracy {100 * row['accuracy']:.1f}%, {row['params']:,} parameters, "
              f"{row['bytes'] / 1e6:.2f} MB, {row['latency_ms']:.2f} ms per batch of {len(example)}", flush=True)
        return row

    def results(self, seconds: float) -> dict[str, Any]:
        """``results.json``: each method's mean and sd over the seeds, each gain over its control, the stages."""
        methods = {}
        for method in self.methods:
            rows = self.rows.get(method.name)
            if not rows:
                continue
            accuracy = [r["accuracy"] for r in rows]
            val = [r["val_accuracy"] for r in rows if "val_accuracy" in r]
            methods[method.name] = {
                **{k: v for k, v in rows[0].items() if k not in ("seed", "accuracy", "val_accuracy", "seconds")},
                "label": method.label, "accuracy": round(statistics.mean(accuracy), 6),
                "accuracy_sd": round(statistics.stdev(accuracy), 6) if len(rows) > 1 else None,
                **({"val_accuracy": round(statistics.mean(val), 6)} if val else {}),
                "seconds": round(statistics.mean(r["seconds"] for r in rows), 2),
                "per_seed": {str(r["seed"]): r["accuracy"] for r in rows}}
        gains = {}
        for m in self.methods:
            control = next((c for c in ((m.control,) if isinstance(m.control, str) else m.control or ())
                            if c in methods), None)
            if control is not None and m.name in methods:
                gains[m.name] = self.gain(m.name, control)
        return {"methods": methods, "gains": gains, "teacher": self.teacher, "compression": self.compression,
                "exported": self.exported, "notes": self.notes, "seeds": self.seeds,
                "total": {"seconds": round(seconds, 1), "threads": torch.get_num_threads()}}

    def gain(self, name: str, control: str) -> dict[str, Any]:
        """``name``'s test accuracy minus ``control``'s, seed by seed: mean, sd, and the seeds where it is ahead."""
        diffs = [a["accuracy"] - b["accuracy"] for a, b in zip(self.rows[name], self.rows[control], strict=True)]
        return {"control": control, "mean": round(statistics.mean(diffs), 6),
                "sd": round(statistics.stdev(diffs), 6) if len(diffs) > 1 else None,
                "wins": sum(d > 0 for d in diffs), "seeds": len(diffs)}


def finetune_method(name: str, stage: Any) -> dict[str, Any]:
    """:class:`warmstart.finetune.FinetuneTrainer`'s options for a transfer job's ``linear_probe``, ``full`` (every
    layer at the stage's lr) or ``lora`` method (a stage with the adapters' ``r``, ``alpha``, ``targets``, ``dropout``)."""
    if name == "linear_probe":
        return {"method": "linear_probe"}
    if name.startswith("lora"):
        return {"method": "lora", "lora": {key: getattr(stage, key) for key in ("r", "alpha", "targets", "dropout")}}
    return {"method": {"name": "full", "backbone_lr_mult": 1.0}}


def in_section(section: str, check: Callable[[], Any]) -> Any:
    """``check()``, its :class:`ConfigError` prefixed with the config section it is about."""
    try:
        return check()
    except ConfigError as err:
        raise ConfigError(f"{section}: {err}") from None


def check_stages(job: Any, sections: Sequence[str]) -> None:
    """Each section's trainer, optimizer and schedule, as :func:`warmstart.optim.check_settings` checks them, and
    where a method of ``job.methods`` uses LoRA, the ``lora`` section's options (and that peft is installed)."""
    for section in sections:
        stage = getattr(job, section)
        check_settings(stage.trainer, stage.optimizer, stage.scheduler, where=section)
    if any(method.startswith("lora") for method in getattr(job, "methods", ())):
        from warmstart.finetune.lora import check_lora_options, require_peft

        lora = job.lora
        in_section("lora", lambda: check_lora_options(lora.r, lora.alpha, lora.dropout, lora.targets))
        require_peft()


def check_lora_targets(job: Any, model: nn.Module) -> None:
    """Where a method uses LoRA, the ``lora.targets`` resolved against ``model`` (a module it lacks is named)."""
    if any(method.startswith("lora") for method in job.methods):
        from warmstart.finetune import resolve_targets

        in_section("lora.targets", lambda: resolve_targets(model, job.lora.targets))


def run_job(job: Any, methods: Sequence[Method], *, data: Any = None, test: Any, val: Any, title: str, story: str,
            progress: bool = True, seeds: Sequence[int] | None = None, default_teacher: str | None = None,
            stages: Sequence[str] = (), compress: Callable[[JobRun], None] | None = None, resume: bool = False,
            keep: Sequence[str] = (), command: str = "run") -> dict[str, Any]:
    """Run a declared job: claim its folder, train every method over the seeds, choose the teacher, train the
    students, run the compression stage, and write ``results.json``, ``report.md`` and the plots.

    Args:
        job: the job's config (``out_dir``, ``trainer.overwrite``); recorded in ``job.yaml``.
        methods: its rows, in the order they train and are reported.
        data: the job's data (``run.data`` for its methods and stages).
        test: the test loader a method's network is measured on (once, at the end of its training).
        val: the validation loader (choices); ``None``: none.
        title: the report's title.
        story: the report's first paragraph: what the job did.
        progress: print a heading per method.
        seeds: the seeds (default: ``job.trainer.seed``).
        default_teacher: the teacher kept unless another beats it beyond chance on validation.
        stages: the sub-folders a run may write, refused or cleared with an earlier run.
        compress: the compression stage, after the students.
        resume: continue the run in ``out_dir`` (the methods continue their own checkpoints).
        keep: files in ``out_dir`` the job reads (an overwrite leaves them).
        command: the CLI command, for the rerun line.

    Raises:
        OutDirBusyError: another run holds ``out_dir``.
        RunExistsError: ``out_dir`` holds an earlier run and ``trainer.overwrite`` is False.
    """
    out = check_out_dir(job.out_dir)
    run = JobRun(job, data, methods, test, val, seeds or [job.trainer.seed], progress, default_teacher)
    started = time.perf_counter()
    with job_lock(out, job.trainer.overwrite, stages=stages, keep=keep, fresh=not resume,
                  resume_with="--resume (the same command and config)"):
        save_config(recorded_job(job), out / "job.yaml")
        run.train(students=False)
        if any(m.student for m in methods):
            run.choose_teacher()
            run.train(students=True)
        if compress is not None:
            compress(run)
        results = run.results(time.perf_counter() - started)
        report.write(out, results, run.curves, title=title, story=story,
                     command=rerun_command(out, command))
    report.print_summary(results)
    print(f"[warmstart {command}] wrote {out / 'results.json'}, {out / 'report.md'} and plots")
    return results
