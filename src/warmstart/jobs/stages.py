"""The stage runners behind ``warmstart pretrain|finetune|distill``, which ``warmstart run`` composes too."""

from __future__ import annotations

import dataclasses
import functools
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from warmstart._run_dir import check_out_dir, holds, job_lock
from warmstart.checkpoint import save_weights
from warmstart.config import ModelConfig, read_yaml, save_config, to_dict
from warmstart.data import DataBundle, InMemoryLoader, build_data
from warmstart.distill import AugmentedViews, DistillTrainer
from warmstart.errors import ConfigError
from warmstart.evaluation import evaluate
from warmstart.finetune import FinetuneTrainer, LoadReport, fine_tune, load_pretrained, swap_head
from warmstart.jobs.schema import DistillJob, FinetuneJob, PretrainJob
from warmstart.models import build_model_for
from warmstart.optim import check_settings
from warmstart.pretrain import AutoencoderTrainer, ProximalTrainer, conv_autoencoder, save_pretrained
from warmstart.trainer import Trainer


@dataclasses.dataclass
class StageResult:
    """What a stage runner returns.

    Attributes:
        test: metrics on the test split, measured once at the end (``loss``, ``accuracy``).
        val: metrics on the validation split (``None`` without one).
        params: parameters of the trained model.
        seconds: wall time of the stage.
        history: per-epoch metrics (validation metrics are ``val_*``).
        model: the trained model.
        weights: the ``.safetensors`` file written (``None`` without an ``out_dir``).
        extra: stage-specific facts (the teacher's accuracy, the load report, ...).
        steps: optimizer steps the stage's (last) training took.
    """

    test: dict[str, float]
    val: dict[str, float] | None
    params: int
    seconds: float
    history: list[dict[str, Any]]
    model: nn.Module
    weights: Path | None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    steps: int = 0

    def summary(self) -> dict[str, Any]:
        """The figures a person reads: test metrics, validation accuracy, parameters, seconds."""
        out: dict[str, Any] = {f"test_{k}": v for k, v in self.test.items()}
        if self.val is not None and "accuracy" in self.val:
            out["val_accuracy"] = self.val["accuracy"]
        return {**out, "params": self.params, "seconds": round(self.seconds, 1), **self.extra}


def count_parameters(model: nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


def resolve_seed(job: Any) -> int:
    """The job's ``trainer.seed``, or a fresh one written into the job (so ``job.yaml`` records the seed used)."""
    if job.trainer.seed is None:
        job.trainer.seed = random.SystemRandom().randrange(2**31 - 1)
    return job.trainer.seed


def resume_seed(job: Any, out: Path | None) -> None:
    """A resumed job without a seed of its own takes the one its first run drew (``job.yaml``): the same data split
    and the same trainer seed, or the run would continue on other data."""
    recorded = None if out is None else out / "job.yaml"
    if job.trainer.seed is None and recorded is not None and recorded.is_file():
        job.trainer.seed = (read_yaml(recorded).get("trainer") or {}).get("seed")


def build_job_model(cfg: ModelConfig, data: DataBundle, seed: int | None = None, *, key: str = "model") -> nn.Module:
    """``cfg``'s model for ``data`` (:func:`warmstart.models.build_model_for`), seeded by ``seed``."""
    return build_model_for(cfg.name, cfg.args, data.num_classes, data.image_shape, seed, where=key)


def build_trainer(cls: type[Trainer], model: nn.Module, job: Any, loss_fn: Any = None, **kwargs: Any) -> Trainer:
    """The one way every job builds its trainer: the job's config objects, as they are, and the job recorded."""
    if loss_fn is not None:
        kwargs["loss_fn"] = loss_fn
    trainer = cls(model, optimizer=job.optimizer, config=job.trainer, scheduler=job.scheduler, **kwargs)
    trainer.job_config = recorded_job(job)
    return trainer


def recorded_job(job: Any) -> dict[str, Any]:
    """``job`` as ``job.yaml`` and the checkpoints record it: without the permission to overwrite.

    ``trainer.overwrite`` (the stages' too) belongs to the command that gave it (``--overwrite``):
    running the recorded file again into the same folder is refused, like any later command.
    """
    recorded = to_dict(job)
    for section in (recorded, *(value for value in recorded.values() if isinstance(value, dict))):
        if isinstance(section.get("trainer"), dict):
            section["trainer"]["overwrite"] = False
    return recorded


def check_weight_files(job: Any) -> None:
    """Refuse a job whose weight files (``init``, ``pretrained``, ``teacher_weights``) are missing, before it starts."""
    for key in ("init", "pretrained", "teacher_weights"):
        path = getattr(job, key, None)
        if path is not None and not Path(path).expanduser().is_file():
            raise ConfigError(f"{key}: no weight file at '{path}'; check the path (a .safetensors or .pt file)")


def _check_job(job: Any) -> None:
    """Everything about a single job that can be checked before its data is built: what the first step would find."""
    if isinstance(job, DistillJob) and job.teacher_weights is None:
        raise ConfigError("distill needs teacher_weights: the trained teacher's weights (a .safetensors or .pt file)")
    check_weight_files(job)
    check_settings(job.trainer, job.optimizer, job.scheduler)


def _holding_out_dir(runner: Callable[..., StageResult]) -> Callable[..., StageResult]:
    """Run a stage holding its folder (:func:`warmstart._run_dir.job_lock`): claimed before anything is written there,
    ``job.yaml`` included, and refused when it holds an earlier run unless ``trainer.overwrite`` (``--overwrite``)."""

    @functools.wraps(runner)
    def run(job: Any, data: DataBundle | None = None, progress: bool = True, resume: bool = False) -> StageResult:
        if not progress:  # the CLI's --quiet; True leaves the job's own trainer.progress
            job.trainer.progress = False
        _check_job(job)
        out = None if job.trainer.out_dir is None else check_out_dir(job.trainer.out_dir)
        if resume and out is None:
            raise ConfigError("--resume continues the run in the run folder, and this job has none: set "
                              "trainer.out_dir to the folder of the run to continue")
        phases = ("probe", "full") if isinstance(job, FinetuneJob) and job.method == "recipe" else ()  # fine_tune's
        reads = [getattr(job, key) for key in ("init", "pretrained", "teacher_weights") if getattr(job, key, None)]
        with job_lock(out, job.trainer.overwrite, stages=phases, keep=reads, out_key="trainer.out_dir",
                      fresh=not resume, resume_with="--resume (the same command and config)"):
            if resume:
                resume_seed(job, out)
            return runner(job, data, "last" if resume else None)

    return run


def _start(job: Any) -> tuple[float, int, Path | None]:
    """The stage's start time and seed; the resolved job written into its folder (by the process holding it)."""
    started, seed = time.perf_counter(), resolve_seed(job)
    out = None if job.trainer.out_dir is None else check_out_dir(job.trainer.out_dir)
    if out is not None and holds(out):
        save_config(recorded_job(job), out / "job.yaml")
    return started, seed, out


def _finish(trainer: Trainer, data: DataBundle, started: float, weights: Path | None, history: list[dict[str, Any]],
            **extra: Any) -> StageResult:
    val = None if data.val is None else trainer.evaluate(data.val)
    return StageResult(test=trainer.evaluate(data.test), val=val, params=count_parameters(trainer.unwrapped_model),
                       seconds=time.perf_counter() - started, history=history, model=trainer.unwrapped_model,
                       weights=weights, extra=extra, steps=trainer.global_step)


@_holding_out_dir
def run_pretrain(job: PretrainJob, data: DataBundle | None = None, resume: str | None = None) -> StageResult:
    """Pretrain on ``job.data``; write ``pretrained.safetensors`` (or ``encoder.safetensors``) to the run folder."""
    started, seed, out = _start(job)
    data = data or build_data(job.data, seed)
    if job.method == "autoencoder":
        ae_args = {"width": 32, "latent": 64, **job.autoencoder}
        torch.manual_seed(seed)
        model = conv_autoencoder(data.image_shape[0], data.image_shape[-1], ae_args.pop("width"), ae_args.pop("latent"))
        trainer = build_trainer(AutoencoderTrainer, model, job, **ae_args)
    else:
        model = build_job_model(job.model, data, seed)
        if job.init is not None:
            load_pretrained(model, job.init)
        trainer = (build_trainer(ProximalTrainer, model, job, lam=job.lam) if job.method == "proximal"
                   else build_trainer(Trainer, model, job))
    trainer.fit(data.train, data.val, resume=resume)
    weights = None
    if out is not None and job.method == "autoencoder":
        weights = save_weights(out / "encoder.safetensors", model.encoder.state_dict(),
                               {"latent": model.latent, "config": to_dict(job)})
    elif out is not None:
        weights = save_pretrained(model, out / "pretrained.safetensors", config=to_dict(job), source=job.data.name)
    return _finish(trainer, data, started, weights, trainer.history)


@_holding_out_dir
def run_finetune(job: FinetuneJob, data: DataBundle | None = None, resume: str | None = None) -> StageResult:
    """Fine-tune ``job.pretrained`` on ``job.data`` with ``job.method``; write ``finetuned.safetensors``."""
    started, seed, out = _start(job)
    data = data or build_data(job.data, seed)
    model = build_job_model(job.model, data, seed)
    report: LoadReport | None = None
    if job.pretrained is not None:
        report = load_pretrained(model, job.pretrained)
        if not job.keep_head:  # a new task gets a new head, also when its class count matches the old one
            swap_head(model, data.num_classes)
        if job.trainer.progress:
            print(report)
    if job.method == "recipe":
        smoothing = 0.1 if job.label_smoothing is None else job.label_smoothing
        # one network (ensemble=False): the job saves it and later stages distil or load it
        result = fine_tune(model, data.train, data.val, epochs=job.trainer.epochs, optimizer=job.optimizer,
                           scheduler=job.scheduler, label_smoothing=smoothing, proximal=job.proximal, ensemble=False,
                           out_dir=job.trainer.out_dir, config=dataclasses.replace(job.trainer, out_dir=None),
                           resume=resume, **job.method_args)
        trainer, history = result.trainer, result.history
        extra = {} if result.selection is None else {"choice": result.choice, "scores": result.scores}
    else:
        loss_fn = functools.partial(F.cross_entropy, label_smoothing=job.label_smoothing or 0.0)
        trainer = build_trainer(FinetuneTrainer, model, job, loss_fn, proximal=job.proximal,
                                method={"name": job.method, **job.method_args})
        history, extra = trainer.fit(data.train, data.val, resume=resume), {}
    weights = None
    if out is not None:
        weights = save_pretrained(model, out / "finetuned.safetensors", config=to_dict(job), source=job.data.name)
    return _finish(trainer, data, started, weights, history, **extra,
                   **({} if report is None else {"loaded": len(report.loaded)}))


@_holding_out_dir
def run_distill(job: DistillJob, data: DataBundle | None = None, resume: str | None = None) -> StageResult:
    """Distil ``job.teacher_weights`` into ``job.student`` on ``job.data``; write ``student.safetensors``."""
    started, seed, out = _start(job)
    data = data or build_data(job.data, seed)
    transfer = _transfer_set(job, data, seed)  # its errors before the teacher is built and measured
    teacher = build_job_model(job.teacher, data, seed, key="teacher")
    student = build_job_model(job.student, data, seed, key="student")
    load_pretrained(teacher, job.teacher_weights)
    trainer = build_trainer(DistillTrainer, student, job, teacher=teacher, temperature=job.temperature,
                            alpha=job.alpha, cache_teacher=job.cache_teacher)
    teacher_test = evaluate(teacher, data.test, device=job.trainer.device)
    trainer.fit(transfer, data.val, resume=resume)
    weights = None if out is None else trainer.save_weights(out / "student.safetensors")
    return _finish(trainer, data, started, weights, trainer.history, teacher_accuracy=teacher_test["accuracy"],
                   teacher_params=count_parameters(teacher))


def _transfer_set(job: DistillJob, data: DataBundle, seed: int) -> Any:
    """The images the student learns from: the labelled training set, or every training image unlabelled."""
    train = data.train
    if job.unlabelled:
        if data.pool is None:
            raise ConfigError(f"distill 'unlabelled' needs a bundled data set (mnist5k, digits, fake), not '{job.data.name}'")
        train = InMemoryLoader(data.pool, None, batch_size=job.data.batch_size, shuffle=True, seed=seed,
                               transform=train.transform)
    if not (job.cache_teacher and job.views is not None):
        return train
    if not isinstance(train, InMemoryLoader) or train.transform is None:
        raise ConfigError("distill 'views' caches augmented views: it needs a bundled data set with data.augment")
    tensors = (train.inputs.cpu(),) if train.targets is None else (train.inputs.cpu(), train.targets.cpu())
    views = AugmentedViews(TensorDataset(*tensors), lambda x: train.transform(x.unsqueeze(0)).squeeze(0),
                           views=job.views, seed=seed)
    return DataLoader(views, batch_size=job.data.batch_size, shuffle=True)


def rerun_command(out: Path, command: str = "run") -> str:
    """The command that runs this job again from the folder it was started in, into a new folder beside this run's
    (a finished run is never replaced unasked; ``--overwrite`` would replace it)."""
    return f"cd {os.getcwd()} && warmstart {command} {out / 'job.yaml'} out_dir={out}-rerun"
