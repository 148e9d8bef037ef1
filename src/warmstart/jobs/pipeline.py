"""``warmstart run``: pretrain, fine-tune with every method, distil the best model, and write a report."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from torch import nn

from warmstart.config import save_config, to_dict
from warmstart.data import InMemoryLoader
from warmstart.distill import DistillTrainer
from warmstart.errors import ConfigError
from warmstart.finetune import FinetuneTrainer, fine_tune, load_pretrained
from warmstart.jobs.data import DataBundle, build_data
from warmstart.jobs.report import print_table, write_report
from warmstart.jobs.run import build_job_model, count_parameters
from warmstart.jobs.schema import PipelineJob, StageConfig
from warmstart.pretrain import save_pretrained
from warmstart.trainer import Trainer

METHODS = ("scratch", "linear_probe", "partial", "full", "gradual", "proximal", "recipe")


def _stage(stage: StageConfig) -> dict[str, Any]:
    return {"optimizer": to_dict(stage.optimizer), "max_epochs": stage.epochs,
            "scheduler": None if stage.scheduler is None else to_dict(stage.scheduler)}


class _Run:
    """The state of one pipeline run: options shared by every stage, and what each method scored."""

    def __init__(self, job: PipelineJob, progress: bool):
        self.job, self.out = job, Path(job.out_dir)
        self.common = {"seed": job.seed, "device": job.device, "precision": job.precision, "progress": progress}
        self.results: dict[str, dict[str, Any]] = {}
        self.curves: dict[str, list[dict[str, Any]]] = {}

    def record(self, name: str, trainer: Trainer, data: DataBundle, started: float,
               history: list[dict[str, Any]] | None = None, **extra: Any) -> None:
        accuracy = trainer.evaluate(data.test)["accuracy"]
        self.results[name] = {"accuracy": round(accuracy, 4), "params": count_parameters(trainer.unwrapped_model),
                              "seconds": round(time.perf_counter() - started, 2), **extra}
        self.curves[name] = history if history is not None else trainer.history
        print(f"[warmstart run] {name}: accuracy {100 * accuracy:.1f}%  "
              f"({self.results[name]['seconds']:.1f} s)", flush=True)

    def trainer(self, cls: type[Trainer], model: nn.Module, stage: StageConfig, folder: str, **kwargs: Any) -> Trainer:
        options = _stage(stage)
        trainer = cls(model, optimizer=options.pop("optimizer"), out_dir=str(self.out / folder), **options,
                      **self.common, **kwargs)
        trainer.job_config = to_dict(self.job)
        return trainer


def run_pipeline(job: PipelineJob, progress: bool = True) -> dict[str, dict[str, Any]]:
    """Run the whole story of ``job`` and return ``{method: {"accuracy", "params", "seconds", ...}}``.

    1. Pretrain ``job.model`` on ``job.source``; measure it zero-shot on ``job.target`` when the
       classes agree.
    2. Fine-tune it on ``job.target`` with each of ``job.methods`` (``scratch`` trains the same
       architecture from random weights).
    3. Distil the most accurate fine-tuned model into ``job.student`` (at least 10x fewer
       parameters), next to the same student trained from scratch on the labels.

    Writes ``results.json``, ``report.md``, learning-curve and accuracy plots (PNG, when
    matplotlib is installed) and each stage's checkpoints into ``job.out_dir``.
    """
    if job.alpha != 1.0 and job.distill_on_unlabelled:
        raise ConfigError("distill_on_unlabelled distils on images without their labels, so alpha must be 1 "
                          "(set alpha: 1.0, or distill_on_unlabelled: false to distil on the labelled shots)")
    source, target = build_data(job.source, job.seed), build_data(job.target, job.seed)
    model_params = count_parameters(build_job_model(job.model, target))
    student_params = count_parameters(build_job_model(job.student, target))
    if student_params * 10 > model_params:
        raise ConfigError(f"the student has {student_params} parameters, more than 1/10 of the model's "
                          f"{model_params}: make it smaller (e.g. student.args.width)")
    run = _Run(job, progress)
    run.out.mkdir(parents=True, exist_ok=True)
    save_config(job, run.out / "job.yaml")
    total = time.perf_counter()

    started = time.perf_counter()
    model = build_job_model(job.model, source, job.seed)
    pretrainer = run.trainer(Trainer, model, job.pretrain, "pretrain")
    pretrainer.fit(source.train, source.test)
    run.record("pretrain", pretrainer, source, started, dataset=job.source.name)
    pretrained = save_pretrained(model, run.out / "pretrain" / "pretrained.safetensors", config=to_dict(job),
                                 source=job.source.name)
    if source.num_classes == target.num_classes:
        run.record("zero_shot", Trainer(model, progress=False, device=job.device), target, time.perf_counter(),
                   history=[])

    finetuned = {method: _finetune(run, method, target, pretrained) for method in job.methods}
    candidates = [m for m in finetuned if m != "scratch"] or list(finetuned)
    if candidates:
        best = max(candidates, key=lambda m: run.results[m]["accuracy"])
        _distill(run, target, finetuned[best], best)

    run.results["total"] = {"seconds": round(time.perf_counter() - total, 2)}
    write_report(run.out, job, run.results, run.curves)
    print_table(run.results)
    print(f"[warmstart run] wrote {run.out / 'results.json'}, {run.out / 'report.md'} and plots")
    return run.results


def _finetune(run: _Run, method: str, target: DataBundle, pretrained: Path) -> nn.Module:
    job, stage, started = run.job, run.job.finetune, time.perf_counter()
    model = build_job_model(job.model, target, job.seed)
    if method != "scratch":
        load_pretrained(model, pretrained)
    folder = f"finetune/{method}"
    if method == "recipe":
        result = fine_tune(model, target.train, target.test, target.num_classes, epochs=stage.epochs,
                           lr=stage.optimizer.lr, weight_decay=stage.optimizer.weight_decay,
                           out_dir=str(run.out / folder), **run.common)
        run.record(method, result.trainer, target, started, history=result.history)
        return model
    if method == "proximal":  # weight decay toward zero would fight the pull toward the pretrained weights
        stage = dataclasses.replace(stage, optimizer=dataclasses.replace(stage.optimizer, weight_decay=0.0))
    if method == "scratch":
        trainer = run.trainer(Trainer, model, stage, folder)
    else:
        trainer = run.trainer(FinetuneTrainer, model, stage, folder, strategy="full" if method == "proximal" else method,
                              proximal=job.proximal_lam if method == "proximal" else None)
    trainer.fit(target.train, target.test)
    run.record(method, trainer, target, started)
    return model


def _distill(run: _Run, target: DataBundle, teacher: nn.Module, teacher_name: str) -> None:
    job = run.job
    started = time.perf_counter()
    scratch = run.trainer(Trainer, build_job_model(job.student, target, job.seed), job.distill,
                          "distill/student_scratch")
    scratch.fit(target.train, target.test)
    run.record("student_scratch", scratch, target, started)

    started = time.perf_counter()
    train = target.train
    if job.distill_on_unlabelled and target.pool is not None:
        train = InMemoryLoader(target.pool, None, batch_size=job.target.batch_size, shuffle=True, seed=job.seed,
                               transform=getattr(target.train, "transform", None))
    distiller = run.trainer(DistillTrainer, build_job_model(job.student, target, job.seed), job.distill,
                            "distill/student_distilled", teacher=teacher, temperature=job.temperature, alpha=job.alpha)
    distiller.fit(train, target.test)
    run.record("student_distilled", distiller, target, started, teacher=teacher_name)
