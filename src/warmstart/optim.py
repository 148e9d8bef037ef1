"""Optimizers and learning-rate schedules built by name, as a config file names them."""

from __future__ import annotations

import math
import warnings
from collections.abc import Collection, Iterable
from typing import Any

import torch
from torch import nn

from warmstart._runtime import check_precision, select_device
from warmstart.config import OptimizerConfig, SchedulerConfig, TrainerConfig, to_dict
from warmstart.errors import ConfigError, nearest, unknown_name_error

# name -> (class, options accepted besides lr and weight_decay)
OPTIMIZERS: dict[str, tuple[type[torch.optim.Optimizer], tuple[str, ...]]] = {
    "sgd": (torch.optim.SGD, ("momentum", "nesterov", "dampening")),
    "adam": (torch.optim.Adam, ("betas", "eps", "amsgrad")),
    "adamw": (torch.optim.AdamW, ("betas", "eps", "amsgrad")),
    "rmsprop": (torch.optim.RMSprop, ("alpha", "eps", "momentum", "centered")),
    "adagrad": (torch.optim.Adagrad, ("lr_decay", "eps", "initial_accumulator_value")),
}

SCHEDULERS = ("constant", "cosine", "step", "plateau")

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def param_groups_weight_decay(named_params: nn.Module | Iterable[tuple[str, nn.Parameter]], weight_decay: float, *,
                              no_decay: Collection[str] = (), lr: float | None = None,
                              name: str | None = None) -> list[dict[str, Any]]:
    """Split trainable parameters into a decayed group and a group without weight decay.

    The one builder every trainer uses. No weight decay on biases and normalisation weights (all
    1-D parameters: decaying them toward zero only hurts, as in timm and nanoGPT) nor on the
    parameters named in ``no_decay`` (anchored weights: the proximal term pulls them toward
    ``w0``, and decay toward zero would change the objective).

    Args:
        named_params: a model, or ``(name, parameter)`` pairs (e.g. one layer group's).
        weight_decay: decay of the first group.
        no_decay: parameter names exempt from decay.
        lr: a learning rate to put in both groups (``None``: the optimizer's).
        name: a label for both groups (``"head"``, ``"block3"``, ...).

    Returns:
        Up to two parameter-group dicts for a ``torch.optim`` optimizer (empty groups left out).

    Examples:
        >>> groups = param_groups_weight_decay(nn.Linear(4, 2), 0.01)
        >>> [(len(g["params"]), g["weight_decay"]) for g in groups]
        [(1, 0.01), (1, 0.0)]
    """
    pairs = named_params.named_parameters() if isinstance(named_params, nn.Module) else named_params
    exempt = set(no_decay)
    decay, no_decay_params = [], []
    for param_name, p in pairs:
        if p.requires_grad:
            (no_decay_params if p.ndim <= 1 or param_name in exempt else decay).append(p)
    extra = {k: v for k, v in (("lr", lr), ("name", name)) if v is not None}
    groups = [{"params": decay, "weight_decay": weight_decay, **extra},
              {"params": no_decay_params, "weight_decay": 0.0, **extra}]
    return [g for g in groups if g["params"]]


def build_optimizer(params: Iterable[Any], name: str = "adamw", lr: float = 1e-3,
                    weight_decay: float = 0.0, **options: Any) -> torch.optim.Optimizer:
    """Build a ``torch.optim`` optimizer from its name.

    Args:
        params: parameters or parameter-group dicts.
        name: one of ``sgd``, ``adam``, ``adamw``, ``rmsprop``, ``adagrad`` (case-insensitive).
        lr: learning rate.
        weight_decay: L2 (``sgd``, ``adam``, ...) or decoupled (``adamw``) weight decay.
        **options: the optimizer's own options (``momentum``, ``nesterov``, ``betas``, ``eps``, ...);
            ``None`` values are left at PyTorch's default.

    Returns:
        The optimizer.

    Raises:
        ConfigError: unknown optimizer name, or an option this optimizer does not take.

    Examples:
        >>> model = nn.Linear(4, 2)
        >>> opt = build_optimizer(model.parameters(), "sgd", lr=0.1, momentum=0.9, nesterov=True)
    """
    key = name.lower()
    if key not in OPTIMIZERS:
        raise unknown_name_error("optimizer", name, OPTIMIZERS)
    cls, accepted = OPTIMIZERS[key]
    options = {k: v for k, v in options.items() if v is not None}
    for option in options:
        if option not in accepted:
            raise ConfigError(f"optimizer '{key}' has no option '{option}'{nearest(option, accepted)}; "
                              f"it takes lr, weight_decay, {', '.join(accepted)}")
    if "betas" in options:
        options["betas"] = tuple(options["betas"])
    if lr <= 0 or not math.isfinite(lr):
        raise ConfigError(f"learning rate must be a positive number, got lr={lr}")
    return cls(params, lr=lr, weight_decay=weight_decay, **options)


class WarmupCosine:
    """Multiplier for ``LambdaLR``: linear warmup from ``start_factor`` to 1, then cosine to ``min_ratio``.

    ``factor(step) = start + (1 - start) * step / warmup`` while ``step < warmup``, then
    ``min_ratio + (1 - min_ratio) * 0.5 * (1 + cos(pi * progress))`` with
    ``progress = (step - warmup) / (total - warmup)`` clamped to [0, 1].
    """

    def __init__(self, total_steps: int, warmup_steps: int = 0, min_ratio: float = 0.0, start_factor: float = 0.0):
        self.total_steps, self.warmup_steps = int(total_steps), int(warmup_steps)
        self.min_ratio, self.start_factor = float(min_ratio), float(start_factor)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.start_factor + (1.0 - self.start_factor) * step / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupStep:
    """Multiplier for ``LambdaLR``: linear warmup, then ``gamma ** (epoch // step_size)`` decay."""

    def __init__(self, steps_per_epoch: int, step_size: int, gamma: float, warmup_steps: int = 0,
                 start_factor: float = 0.0):
        self.steps_per_epoch, self.step_size, self.gamma = int(steps_per_epoch), int(step_size), float(gamma)
        self.warmup_steps, self.start_factor = int(warmup_steps), float(start_factor)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.start_factor + (1.0 - self.start_factor) * step / self.warmup_steps
        epoch = step // max(1, self.steps_per_epoch)
        return self.gamma ** (epoch // max(1, self.step_size))


def build_scheduler(optimizer: torch.optim.Optimizer, name: str = "cosine", *, total_steps: int,
                    steps_per_epoch: int, warmup_steps: int = 0, warmup_epochs: float = 0.0,
                    warmup_start_factor: float = 0.0, min_lr_ratio: float = 0.0, step_size: int = 30,
                    gamma: float = 0.1, patience: int = 10, factor: float = 0.1, mode: str = "min",
                    monitor: str = "val_loss") -> torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau:
    """Build a learning-rate schedule by name.

    Every schedule but ``plateau`` is stepped once per optimizer step (the Trainer does this);
    ``plateau`` is stepped once per epoch with the metric named by ``monitor``.

    Args:
        optimizer: the optimizer to schedule.
        name: ``constant``, ``cosine`` (warmup then cosine decay to ``min_lr_ratio * lr``),
            ``step`` (warmup then ``lr * gamma ** (epoch // step_size)``) or ``plateau``.
        total_steps: optimizer steps in the whole run (for ``cosine``).
        steps_per_epoch: optimizer steps per epoch (to convert epochs into steps).
        warmup_steps: linear-warmup length in optimizer steps; ``warmup_epochs`` adds epochs.
        warmup_epochs: linear-warmup length in epochs (may be fractional).
        warmup_start_factor: the multiplier warmup starts from.
        min_lr_ratio: cosine floor as a fraction of the base learning rate.
        step_size: epochs between decays (``step``).
        gamma: decay factor (``step``).
        patience: epochs without improvement before a decay (``plateau``).
        factor: decay factor (``plateau``).
        mode: ``min`` or ``max`` for the monitored metric (``plateau``).
        monitor: metric name the Trainer feeds a ``plateau`` schedule.

    Returns:
        A scheduler; a ``plateau`` schedule carries a ``monitor`` attribute.

    Raises:
        ConfigError: unknown schedule name.

    Examples:
        >>> opt = build_optimizer(nn.Linear(2, 2).parameters(), "sgd", lr=0.1)
        >>> sched = build_scheduler(opt, "cosine", total_steps=100, steps_per_epoch=10, warmup_steps=5)
    """
    key = name.lower()
    warmup = int(warmup_steps + round(warmup_epochs * steps_per_epoch))
    if key != "plateau" and warmup > total_steps:
        reached = warmup_start_factor + (1 - warmup_start_factor) * total_steps / warmup
        warnings.warn(f"the warmup of {warmup} optimizer steps is longer than the run's {total_steps}: the learning rate "
                      f"never reaches its peak (it ends at {reached:.0%} of lr). Shorten warmup_epochs / warmup_steps, "
                      "or train longer", stacklevel=2)
    if key == "cosine":
        fn = WarmupCosine(total_steps, warmup, min_lr_ratio, warmup_start_factor)
    elif key == "step":
        fn = WarmupStep(steps_per_epoch, step_size, gamma, warmup, warmup_start_factor)
    elif key == "constant":
        fn = WarmupStep(steps_per_epoch, step_size=1, gamma=1.0, warmup_steps=warmup, start_factor=warmup_start_factor)
    elif key == "plateau":
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=factor, patience=patience)
        scheduler.monitor = monitor
        return scheduler
    else:
        raise unknown_name_error("scheduler", name, SCHEDULERS)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)


def check_settings(trainer: TrainerConfig, optimizer: OptimizerConfig, scheduler: SchedulerConfig | None,
                   where: str = "") -> None:
    """Check a trainer's, optimizer's and schedule's settings before any data is built or step trained.

    The device and precision are resolved, and the optimizer and schedule are built on a
    one-parameter stand-in, so a name or option that only the first training step would have
    tried is an error before the data is built or an earlier stage trains.

    Args:
        trainer: the ``trainer`` section.
        optimizer: the ``optimizer`` section.
        scheduler: the ``scheduler`` section (``None``: none).
        where: the section's place in the config (``finetune``), named in errors.

    Raises:
        ConfigError: what the Trainer would refuse, with the section named.

    Examples:
        >>> check_settings(TrainerConfig(device="cpu"), OptimizerConfig(name="adamx"), None, where="finetune")
        Traceback (most recent call last):
        ...
        warmstart.errors.ConfigError: finetune.optimizer: unknown optimizer 'adamx' (did you mean 'adam'?); ...
    """
    prefix = f"{where}." if where else ""
    stand_in = nn.Parameter(torch.zeros(1))
    options = {k: v for k, v in to_dict(optimizer).items() if k not in ("name", "lr", "weight_decay")}
    section = "trainer"
    try:
        check_precision(trainer.precision, select_device(trainer.device))
        section = "optimizer"
        built = build_optimizer([stand_in], optimizer.name, optimizer.lr, optimizer.weight_decay, **options)
        section = "scheduler"
        if scheduler is not None:
            build_scheduler(built, total_steps=1, steps_per_epoch=1, **to_dict(scheduler))
    except ConfigError as err:
        raise ConfigError(f"{prefix}{section}: {err}") from None
