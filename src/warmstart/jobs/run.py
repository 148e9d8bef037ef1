"""Run one job from its config: ``pretrain``, ``finetune`` or ``distill``; each returns its test metrics."""

from __future__ import annotations

import functools
import inspect
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from warmstart.checkpoint import save_weights
from warmstart.config import TrainerConfig, save_config, to_dict
from warmstart.data import InMemoryLoader
from warmstart.distill import AugmentedViews, DistillTrainer
from warmstart.errors import ConfigError
from warmstart.finetune import FinetuneTrainer, fine_tune, load_pretrained
from warmstart.jobs.data import DataBundle, build_data
from warmstart.jobs.schema import DistillJob, FinetuneJob, ModelConfig, PretrainJob
from warmstart.models import build_model
from warmstart.pretrain import AutoencoderTrainer, ProximalTrainer, conv_autoencoder, save_pretrained
from warmstart.trainer import Trainer


def build_job_model(cfg: ModelConfig, data: DataBundle, seed: int | None = None) -> nn.Module:
    """Build ``cfg``'s model, filling ``num_classes``, ``in_channels`` / ``in_features`` from the data.

    With ``seed``, the initial weights are drawn from ``torch.manual_seed(seed)`` (reproducible runs).
    """
    from warmstart.models import MODELS

    if seed is not None:
        torch.manual_seed(seed)
    implied = {"num_classes": data.num_classes, "in_channels": data.image_shape[0],
               "in_features": math.prod(data.image_shape)}
    if cfg.name in MODELS:
        accepted = inspect.signature(MODELS[cfg.name]).parameters
        implied = {k: v for k, v in implied.items() if k in accepted}
    else:
        implied = {"num_classes": data.num_classes}
    return build_model(cfg.name, **{**implied, **cfg.args})


def count_parameters(model: nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


def _start(job: Any) -> tuple[TrainerConfig, Path | None]:
    """Write the resolved config into the run folder; return the trainer config and the folder."""
    cfg = job.trainer
    out = None if cfg.out_dir is None else Path(cfg.out_dir)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        save_config(job, out / "job.yaml")
    return cfg, out


def _finish(trainer: Trainer, data: DataBundle, started: float, **extra: Any) -> dict[str, Any]:
    metrics = trainer.evaluate(data.test)
    return {**metrics, "params": count_parameters(trainer.unwrapped_model), "seconds": time.perf_counter() - started,
            "history": trainer.history, **extra}


def run_pretrain(job: PretrainJob) -> dict[str, Any]:
    """Pretrain on ``job.data``; write ``pretrained.safetensors`` (or ``encoder.safetensors``) to the run folder."""
    started = time.perf_counter()
    cfg, out = _start(job)
    data = build_data(job.data, cfg.seed)
    options = {"config": cfg, "scheduler": job.scheduler}
    if job.method == "autoencoder":
        ae_args = {"width": 32, "latent": 64, **job.autoencoder}
        torch.manual_seed(cfg.seed)
        model = conv_autoencoder(data.image_shape[0], data.image_shape[-1], ae_args.pop("width"), ae_args.pop("latent"))
        trainer: Trainer = AutoencoderTrainer(model, to_dict(job.optimizer), **ae_args, **options)
    else:
        model = build_job_model(job.model, data, cfg.seed)
        if job.init is not None:
            load_pretrained(model, job.init)
        trainer = (ProximalTrainer(model, to_dict(job.optimizer), lam=job.lam, **options) if job.method == "proximal"
                   else Trainer(model, to_dict(job.optimizer), **options))
    trainer.job_config = to_dict(job)
    trainer.fit(data.train, data.test)
    result = _finish(trainer, data, started)
    if out is not None:
        if job.method == "autoencoder":
            save_weights(out / "encoder.safetensors", model.encoder.state_dict(),
                         {"latent": model.latent, "config": to_dict(job)})
        else:
            save_pretrained(model, out / "pretrained.safetensors", config=to_dict(job), source=job.data.name,
                            accuracy=result.get("accuracy"))
    return result


def run_finetune(job: FinetuneJob) -> dict[str, Any]:
    """Fine-tune ``job.pretrained`` on ``job.data`` with ``job.strategy``; write ``finetuned.safetensors``."""
    started = time.perf_counter()
    cfg, out = _start(job)
    data = build_data(job.data, cfg.seed)
    model = build_job_model(job.model, data, cfg.seed)
    report = None
    if job.pretrained is not None:  # a head of another class count is skipped and stays freshly initialised
        report = load_pretrained(model, job.pretrained)
        print(report)
    loss_fn = functools.partial(F.cross_entropy, label_smoothing=job.label_smoothing)
    if job.strategy == "recipe":
        args = dict(job.strategy_args)
        trainer_options = {k: v for k, v in to_dict(cfg).items() if k not in ("max_epochs", "out_dir")}
        result = fine_tune(model, data.train, data.test, data.num_classes, epochs=cfg.max_epochs,
                           lr=args.pop("lr", job.optimizer.lr), proximal=job.proximal,
                           weight_decay=args.pop("weight_decay", job.optimizer.weight_decay),
                           label_smoothing=args.pop("label_smoothing", job.label_smoothing or 0.1),
                           out_dir=cfg.out_dir, **args, **trainer_options)
        trainer: Trainer = result.trainer
        trainer.history = result.history
    else:
        trainer = FinetuneTrainer(model, to_dict(job.optimizer), loss_fn, config=cfg, scheduler=job.scheduler,
                                  strategy={"name": job.strategy, **job.strategy_args}, proximal=job.proximal)
        trainer.job_config = to_dict(job)
        trainer.fit(data.train, data.test)
    result_metrics = _finish(trainer, data, started, load_report=None if report is None else str(report))
    if out is not None:
        save_pretrained(model, out / "finetuned.safetensors", config=to_dict(job), source=job.data.name,
                        accuracy=result_metrics.get("accuracy"))
    return result_metrics


def run_distill(job: DistillJob) -> dict[str, Any]:
    """Distil ``job.teacher_weights`` into ``job.student`` on ``job.data``; write ``student.safetensors``."""
    started = time.perf_counter()
    cfg, out = _start(job)
    data = build_data(job.data, cfg.seed)
    teacher = build_job_model(job.teacher, data, cfg.seed)
    if job.teacher_weights is not None:
        load_pretrained(teacher, job.teacher_weights)
    teacher_accuracy = Trainer(teacher, progress=False, device=cfg.device).evaluate(data.test)["accuracy"]
    student = build_job_model(job.student, data, cfg.seed)
    train = data.train
    if job.cache_teacher and job.views is not None:
        if not isinstance(train, InMemoryLoader) or train.transform is None:
            raise ConfigError("distill 'views' caches augmented views: it needs a bundled data set with data.augment")
        views = AugmentedViews(TensorDataset(train.inputs.cpu(), train.targets.cpu()),
                               lambda x: train.transform(x.unsqueeze(0)).squeeze(0), views=job.views, seed=cfg.seed)
        train = DataLoader(views, batch_size=job.data.batch_size, shuffle=True)
    trainer = DistillTrainer(student, teacher, to_dict(job.optimizer), config=cfg, scheduler=job.scheduler,
                             temperature=job.temperature, alpha=job.alpha, cache_teacher=job.cache_teacher)
    trainer.job_config = to_dict(job)
    trainer.fit(train, data.test)
    result = _finish(trainer, data, started, teacher_accuracy=teacher_accuracy,
                     teacher_params=count_parameters(teacher))
    if out is not None:
        trainer.save_weights(out / "student.safetensors")
    return result
