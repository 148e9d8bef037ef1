"""``warmstart run``: pretrain, fine-tune with every method, distil the best model, and write a report.

Every stage is a job of its own (a :class:`PretrainJob`, :class:`FinetuneJob` or :class:`DistillJob`
in a sub-folder, with its ``job.yaml``) run by the same runner as ``warmstart pretrain|finetune|distill``.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path
from typing import Any

from warmstart._run_dir import check_out_dir, job_lock
from warmstart.config import save_config
from warmstart.errors import ConfigError
from warmstart.evaluation import evaluate
from warmstart.jobs.data import DataBundle, build_data
from warmstart.jobs.report import LABELS, print_table, write_report
from warmstart.jobs.schema import DistillJob, FinetuneJob, PipelineJob, PretrainJob, StageConfig
from warmstart.jobs.stages import (StageResult, build_job_model, check_settings, count_parameters, recorded_job,
                                   rerun_command, resolve_seed, resume_seed, run_distill, run_finetune,
                                   run_pretrain)

# how each method of finetune.methods runs as a finetune job: its method, the options, whether it starts pretrained
_METHOD_JOBS: dict[str, tuple[str, dict[str, Any], bool]] = {
    "scratch": ("full", {"backbone_lr_mult": 1.0}, False),
    "linear_probe": ("linear_probe", {}, True),
    "partial": ("partial", {}, True),
    "full": ("full", {}, True),
    "gradual": ("gradual", {}, True),
    "proximal": ("full", {}, True),
    "recipe": ("recipe", {}, True),
    "recipe_scratch": ("recipe", {}, False),
}


CONTROLS = ("scratch", "recipe_scratch")  # no pretrained weights: what each transfer gain is measured against

# every sub-folder a run may write (a recipe's phases have their own): an earlier run's are refused or cleared together
STAGE_FOLDERS = ("pretrain", *(f"finetune/{method}{phase}" for method, (how, _, _) in _METHOD_JOBS.items()
                               for phase in ("", *(("/probe", "/full") if how == "recipe" else ()))),
                 "distill/student_scratch", "distill/student_distilled", "distill/student_hard_same_steps")


class _Run:
    """One pipeline run: its folder, the data, and what each stage scored."""

    def __init__(self, job: PipelineJob, progress: bool, resume: bool = False):
        self.job, self.out, self.progress, self.resume = job, Path(job.out_dir).expanduser(), progress, resume
        self.results: dict[str, dict[str, Any]] = {}
        self.curves: dict[str, list[dict[str, Any]]] = {}

    def stage(self, stage: StageConfig, folder: str) -> tuple[Any, Any, Any]:
        """A stage's trainer, optimizer and schedule settings, writing into ``out_dir/folder`` (replacing the
        earlier run's stage there when the job may overwrite)."""
        seed = self.job.trainer.seed if stage.trainer.seed is None else stage.trainer.seed
        trainer = dataclasses.replace(stage.trainer, out_dir=str(self.out / folder), seed=seed,
                                      progress=stage.trainer.progress and self.progress,
                                      overwrite=stage.trainer.overwrite or self.job.trainer.overwrite)
        return trainer, copy.deepcopy(stage.optimizer), copy.deepcopy(stage.scheduler)

    def heading(self, text: str) -> None:
        if self.progress:
            print(f"\n== {text} ==", flush=True)

    def record(self, name: str, result: StageResult, **extra: Any) -> None:
        test = result.test["accuracy"]
        self.results[name] = {"accuracy": round(test, 6), "params": result.params, "seconds": round(result.seconds, 2),
                              **({} if result.val is None else {"val_accuracy": round(result.val["accuracy"], 6)}),
                              **extra}
        self.curves[name] = result.history
        val = "" if result.val is None else f", validation {100 * result.val['accuracy']:.1f}%"
        print(f"[warmstart run] {LABELS.get(name, name)}: test accuracy {100 * test:.1f}%{val} "
              f"({result.seconds:.1f} s)", flush=True)


def run_pipeline(job: PipelineJob, progress: bool = True, resume: bool = False) -> dict[str, dict[str, Any]]:
    """Run the whole story of ``job`` and return ``{method: {"accuracy", "val_accuracy", "params", "seconds", ...}}``.

    1. Pretrain ``job.model`` on ``job.source``; with ``finetune.keep_head`` (the target has the
       source's classes), measure it zero-shot on the target.
    2. Fine-tune it on ``job.target`` with each of ``finetune.methods``.
    3. Distil the fine-tuned model with the best *validation* accuracy into ``distill.student``
       (at least 10x fewer parameters), next to the same student trained on the labels alone: for
       the same epochs (``student_scratch``) and, when the distillation took more optimizer steps
       (``distill.unlabelled``: its epochs run over every training image), for as many steps
       (``student_hard_same_steps``), so that a gain is not the longer training's.

    Choices use the target's validation split; test accuracy is measured once per model, at the
    end of its stage. Writes ``results.json``, ``report.md``, plots and each stage's folder into
    ``job.out_dir``.

    Raises:
        ConfigError: no validation split on the target, or a student that is not 10x smaller.
        OutDirBusyError: another run holds ``out_dir``.
        RunExistsError: ``out_dir`` holds an earlier run (its files, or its stages' folders) and
            ``trainer.overwrite`` is False (``--overwrite``).
    """
    if job.target.val_per_class is None:
        raise ConfigError("warmstart run picks the teacher by validation accuracy, never by test accuracy: set "
                          "target.val_per_class (labelled images per class held out of the target's training split)")
    for name in ("pretrain", "finetune", "distill"):  # every stage's settings, before the first stage trains
        stage = getattr(job, name)
        check_settings(stage.trainer, stage.optimizer, stage.scheduler, where=name)
    out = check_out_dir(job.out_dir)
    if resume:
        resume_seed(job, out)
    seed = resolve_seed(job)
    with job_lock(out, job.trainer.overwrite, stages=STAGE_FOLDERS, fresh=not resume, out_key="out_dir",
                  resume_with="--resume (the same command and config)"):
        save_config(recorded_job(job), out / "job.yaml")
        source, target = build_data(job.source, seed), build_data(job.target, seed)
        _check_models(job, target)
        run = _Run(job, progress, resume)
        started = time.perf_counter()
        pretrained = _pretrain(run, source, target)
        finetuned = {method: _finetune(run, method, target, pretrained) for method in job.finetune.methods}
        _distill(run, target, finetuned)
        run.results["total"] = {"seconds": round(time.perf_counter() - started, 2)}
        write_report(out, job, run.results, run.curves, command=rerun_command(out))
    print_table(run.results)
    print(f"[warmstart run] wrote {out / 'results.json'}, {out / 'report.md'} and plots")
    return run.results


def _check_models(job: PipelineJob, target: DataBundle) -> None:
    """The model and the student build for the target, the student is 10x smaller, and the distillation has its data."""
    model_params = count_parameters(build_job_model(job.model, target))
    student_params = count_parameters(build_job_model(job.distill.student, target, key="distill.student"))
    if student_params * 10 > model_params:
        raise ConfigError(f"the student has {student_params} parameters, more than 1/10 of the model's "
                          f"{model_params}: make it smaller (e.g. distill.student.args.width)")
    if job.distill.unlabelled and target.pool is None:
        raise ConfigError(f"distill.unlabelled distils on the target's training images without labels, which needs a "
                          f"bundled target (mnist5k, digits, fake), not '{job.target.name}'; set distill.unlabelled: "
                          "false to distil on the labelled images")


def _pretrain(run: _Run, source: DataBundle, target: DataBundle) -> Path:
    job = run.job
    trainer, optimizer, scheduler = run.stage(job.pretrain, "pretrain")
    run.heading(f"1/3 pretrain {job.model.name} on {job.source.name} ({trainer.epochs} epochs)")
    result = run_pretrain(PretrainJob(data=job.source, model=job.model, trainer=trainer, optimizer=optimizer,
                                      scheduler=scheduler), data=source, resume=run.resume)
    run.record("pretrain", result, dataset=job.source.name)
    if job.finetune.keep_head:  # the target has the source's classes: the pretrained model can answer as it is
        started = time.perf_counter()
        zero_shot = StageResult(test=evaluate(result.model, target.test, device=trainer.device),
                                val=evaluate(result.model, target.val, device=trainer.device), params=result.params,
                                seconds=time.perf_counter() - started, history=[], model=result.model, weights=None)
        run.record("zero_shot", zero_shot)
    assert result.weights is not None  # the stage has an out_dir
    return result.weights


def _finetune(run: _Run, method: str, target: DataBundle, pretrained: Path) -> StageResult:
    job, stage = run.job, run.job.finetune
    job_method, options, starts_pretrained = _METHOD_JOBS[method]
    trainer, optimizer, scheduler = run.stage(stage, f"finetune/{method}")
    run.heading(f"2/3 fine-tune on {job.target.name}: {LABELS.get(method, method)} ({trainer.epochs} epochs)")
    result = run_finetune(FinetuneJob(
        data=job.target, model=job.model, trainer=trainer, optimizer=optimizer, scheduler=scheduler,
        pretrained=str(pretrained) if starts_pretrained else None, method=job_method, method_args=options,
        proximal=stage.proximal if method == "proximal" else None, label_smoothing=stage.label_smoothing,
        keep_head=stage.keep_head), data=target, resume=run.resume)
    run.record(method, result, **{k: result.extra[k] for k in ("choice", "scores") if k in result.extra})
    return result


def _distill(run: _Run, target: DataBundle, finetuned: dict[str, StageResult]) -> None:
    job, stage = run.job, run.job.distill
    candidates = {m: r for m, r in finetuned.items() if m not in CONTROLS} or finetuned
    if not candidates:
        return
    best = max(candidates, key=lambda m: candidates[m].val["accuracy"])  # chosen on validation, never on test

    def hard_labels(name: str, max_steps: int | None = None) -> None:
        """The student on the labels alone (``max_steps``: for that many optimizer steps instead of the epochs)."""
        trainer, optimizer, scheduler = run.stage(stage, f"distill/{name}")
        if max_steps is not None:
            trainer = dataclasses.replace(trainer, max_epochs=None, max_steps=max_steps)
        result = run_finetune(FinetuneJob(data=job.target, model=stage.student, trainer=trainer, optimizer=optimizer,
                                          scheduler=scheduler, method="full", method_args={"backbone_lr_mult": 1.0}),
                              data=target, resume=run.resume)
        run.record(name, result, steps=result.steps)

    run.heading(f"3/3 distil: the student on the {job.target.shots or 'all'}-per-class labels alone")
    hard_labels("student_scratch")
    trainer, optimizer, scheduler = run.stage(stage, "distill/student_distilled")
    transfer = "every training image, unlabelled," if stage.unlabelled else "the labelled images"
    run.heading(f"3/3 distil: {LABELS.get(best, best)} (best validation accuracy) teaches the student on {transfer}")
    distilled = run_distill(DistillJob(
        teacher=job.model, teacher_weights=str(candidates[best].weights), student=stage.student, data=job.target,
        trainer=trainer, optimizer=optimizer, scheduler=scheduler, temperature=stage.temperature, alpha=stage.alpha,
        unlabelled=stage.unlabelled), data=target, resume=run.resume)
    run.record("student_distilled", distilled, teacher=best, steps=distilled.steps)
    if distilled.steps != run.results["student_scratch"]["steps"]:  # the fair control: labels alone, as many steps
        run.heading(f"3/3 distil: the student on the labels alone for as many optimizer steps ({distilled.steps})")
        hard_labels("student_hard_same_steps", max_steps=distilled.steps)
