"""One-call fine-tuning (linear-probe warm-up, then full fine-tuning) and a learning-rate finder."""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from warmstart import distributed
from warmstart.callbacks import Callback
from warmstart.config import OptimizerConfig
from warmstart.errors import ConfigError
from warmstart.finetune.strategies import Full, LinearProbe
from warmstart.finetune.trainer import FinetuneTrainer
from warmstart.heads import find_head, swap_head
from warmstart.trainer import Trainer


@dataclasses.dataclass
class FineTuneResult:
    """The outcome of :func:`fine_tune`.

    Attributes:
        model: the fine-tuned model (the same object that was passed in).
        history: per-epoch metrics of both phases; each entry has a ``phase`` key.
        trainer: the trainer of the last phase (for ``evaluate`` and checkpoints).
    """

    model: nn.Module
    history: list[dict[str, Any]]
    trainer: FinetuneTrainer


def fine_tune(model: nn.Module, train_loader: Iterable[Any], val_loader: Iterable[Any] | None = None,
              num_classes: int | None = None, epochs: int = 10, *, optimizer: OptimizerConfig | Mapping[str, Any] | None = None,
              lr: float | None = None, weight_decay: float | None = None, scheduler: Any = None,
              freeze_epochs: int = 2, layer_decay: float | None = 0.9, backbone_lr_mult: float = 1.0,
              label_smoothing: float = 0.1, proximal: float | None = None, head: str | None = None,
              keep_head: bool = False, out_dir: str | os.PathLike | None = None,
              **trainer_kwargs: Any) -> FineTuneResult:
    """Fine-tune a pretrained classifier in one call: a linear-probe warm-up, then full fine-tuning.

    Modelled on fastai's ``fine_tune``: (1) give the model a new head with ``num_classes``
    outputs (a new task needs a new head even when the class count matches; ``keep_head=True``
    keeps the old one); (2) train only the head for ``freeze_epochs`` epochs on cached backbone
    features; (3) unfreeze everything and train ``epochs`` epochs with discriminative rates: the
    head at ``lr`` and backbone group ``i`` of ``G`` at ``lr * layer_decay ** (G - i)`` (or
    ``lr * backbone_lr_mult`` when ``layer_decay`` is None). Both phases use the same optimizer
    (AdamW with lr 3e-3 and weight decay 0.01 unless ``optimizer`` says otherwise; no decay on
    biases and norms), a cosine schedule (phase 3 with a 5% warmup, unless ``scheduler`` is given)
    and cross-entropy with ``label_smoothing``. Warming the head up first keeps a random head's
    large early gradients from disturbing the pretrained features. ``bench/transfer_table.py``
    measures this recipe against the other strategies and its no-pretraining control.

    Args:
        model: the pretrained classifier (changed in place).
        train_loader: training batches ``(inputs, target)``.
        val_loader: evaluated after every epoch.
        num_classes: classes of the new task (``None``: same task, keep the head).
        epochs: epochs of full fine-tuning.
        optimizer: an :class:`OptimizerConfig` or dict (``name``, ``lr`` of the head, ...).
        lr: shorthand for the optimizer's ``lr`` (not together with ``optimizer``).
        weight_decay: shorthand for the optimizer's ``weight_decay`` (not together with ``optimizer``).
        scheduler: the schedule of phase 3 (a :class:`SchedulerConfig` or dict).
        freeze_epochs: epochs of the linear-probe warm-up (0 skips it).
        layer_decay: learning-rate decay per layer group from the head down.
        backbone_lr_mult: backbone learning-rate multiplier when ``layer_decay`` is None.
        label_smoothing: label smoothing of the cross-entropy.
        proximal: ``lam`` of a proximal term toward the pretrained weights in phase 3.
        head: module path of the head (found automatically when omitted).
        keep_head: keep the model's head even though ``num_classes`` is given.
        out_dir: folder for both phases' checkpoints and logs (``probe/`` and ``full/``).
        **trainer_kwargs: more :class:`warmstart.Trainer` options (``precision``, ``device``, ``config``, ...).

    Returns:
        A :class:`FineTuneResult`.

    Raises:
        ConfigError: ``optimizer`` together with ``lr``/``weight_decay``, or ``keep_head`` with a
            head of another class count.

    Example:
        >>> from warmstart.models import small_cnn
        >>> data = [(torch.randn(8, 1, 28, 28), torch.randint(0, 3, (8,)))] * 2
        >>> result = fine_tune(small_cnn(width=4), data, num_classes=3, epochs=1, freeze_epochs=1, progress=False)
        >>> [h["phase"] for h in result.history]
        ['linear_probe', 'full']
    """
    optimizer = _recipe_optimizer(optimizer, lr, weight_decay)
    _prepare_head(model, num_classes, head, keep_head)
    loss_fn = functools.partial(F.cross_entropy, label_smoothing=label_smoothing)
    history: list[dict[str, Any]] = []

    def folder(name: str) -> str | None:
        return None if out_dir is None else str(Path(out_dir) / name)

    if freeze_epochs:
        probe = FinetuneTrainer(model, optimizer, loss_fn, strategy=LinearProbe(), head=head, max_epochs=freeze_epochs,
                                scheduler={"name": "cosine"}, out_dir=folder("probe"), **trainer_kwargs)
        _announce(probe, f"fine_tune phase 1/2: linear probe, the head alone on cached features ({freeze_epochs} epochs)")
        history += [{"phase": "linear_probe", **h} for h in probe.fit(train_loader, val_loader)]
    strategy = Full(backbone_lr_mult=backbone_lr_mult, layer_decay=layer_decay)
    trainer = FinetuneTrainer(model, optimizer, loss_fn, head=head, proximal=proximal, strategy=strategy,
                              max_epochs=epochs, scheduler=scheduler or {"name": "cosine", "warmup_epochs": 0.05 * epochs},
                              out_dir=folder("full"), **trainer_kwargs)
    rates = f"layer-wise decay {layer_decay}" if layer_decay is not None else f"backbone lr x{backbone_lr_mult}"
    _announce(trainer, f"fine_tune phase {2 if freeze_epochs else 1}/{2 if freeze_epochs else 1}: every layer, "
                       f"{rates} ({epochs} epochs)")
    history += [{"phase": "full", **h} for h in trainer.fit(train_loader, val_loader)]
    return FineTuneResult(model=model, history=history, trainer=trainer)


def _announce(trainer: FinetuneTrainer, text: str) -> None:
    if trainer.config.progress and distributed.is_main_process():
        print(text, flush=True)


def _recipe_optimizer(optimizer: Any, lr: float | None, weight_decay: float | None) -> Any:
    if optimizer is not None and (lr is not None or weight_decay is not None):
        raise ConfigError("pass the learning rate and weight decay inside optimizer=..., or lr=/weight_decay= without "
                          "optimizer, not both")
    if optimizer is not None:
        return optimizer
    return {"name": "adamw", "lr": 3e-3 if lr is None else lr, "weight_decay": 0.01 if weight_decay is None else weight_decay}


def _prepare_head(model: nn.Module, num_classes: int | None, head: str | None, keep_head: bool) -> None:
    """A new head for a new task; keeping one is allowed only when it has the right size."""
    if num_classes is None:
        return
    if not keep_head:
        swap_head(model, num_classes, head=head)
    elif find_head(model, head).num_classes != num_classes:
        raise ConfigError(f"keep_head=True, but the head has {find_head(model, head).num_classes} outputs and the task "
                          f"{num_classes} classes; drop keep_head to give the model a new head")


@dataclasses.dataclass
class LRFinderResult:
    """Losses over an exponential learning-rate sweep.

    Attributes:
        lrs: learning rate of each step.
        losses: exponentially smoothed training loss of each step.
        minimum: the rate of the lowest smoothed loss.
        suggestion: ``minimum / 10``: the largest rate that is still safely below divergence
            (Leslie Smith's rule of thumb).
        steepest: the rate where the smoothed loss falls fastest before its minimum (after the
            first tenth of the sweep); noisier, but often a faster choice.
    """

    lrs: list[float]
    losses: list[float]
    minimum: float
    suggestion: float
    steepest: float

    def plot(self, path: str | os.PathLike) -> Path:
        """Save the loss-versus-learning-rate curve as a PNG (needs matplotlib)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot(self.lrs, self.losses)
        ax.axvline(self.suggestion, color="tab:red", linestyle="--", label=f"suggestion {self.suggestion:.2e}")
        ax.set(xscale="log", xlabel="learning rate", ylabel="smoothed training loss", title="LR finder")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return Path(path)


class _RecordLoss(Callback):
    """Record every step's smoothed loss (log_every=1 reads it each step) and stop once it diverges."""

    def __init__(self, smoothing: float, diverge: float):
        self.smoothing, self.diverge = smoothing, diverge
        self.losses: list[float] = []
        self._average = 0.0

    def on_log(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        step = len(self.losses) + 1
        self._average = self.smoothing * self._average + (1 - self.smoothing) * metrics["loss"]
        smoothed = self._average / (1 - self.smoothing**step)  # bias-corrected, as in Adam
        self.losses.append(smoothed)
        if not math.isfinite(smoothed) or smoothed > self.diverge * min(self.losses):
            trainer.should_stop = True


def lr_find(model: nn.Module, train_loader: Iterable[Any], optimizer: Any = None, loss_fn: Any = None, *,
            start_lr: float = 1e-7, end_lr: float = 10.0, num_steps: int = 100, smoothing: float = 0.98,
            diverge: float = 4.0, **trainer_kwargs: Any) -> LRFinderResult:
    """Sweep the learning rate exponentially from ``start_lr`` to ``end_lr`` and record the loss.

    The model and optimizer state are restored afterwards. The sweep stops early when the
    smoothed loss exceeds ``diverge`` times its minimum (or becomes NaN).

    Args:
        model: the model (its weights are restored at the end).
        train_loader: training batches; cycled through if shorter than ``num_steps``.
        optimizer: as for :class:`warmstart.Trainer` (its ``lr`` is replaced by the sweep).
        loss_fn: as for :class:`warmstart.Trainer`.
        start_lr: first learning rate.
        end_lr: last learning rate.
        num_steps: steps of the sweep.
        smoothing: exponential smoothing of the recorded loss.
        diverge: stop when the smoothed loss exceeds this multiple of its minimum.
        **trainer_kwargs: more :class:`warmstart.Trainer` options.

    Returns:
        An :class:`LRFinderResult`.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 3))
        >>> data = [(torch.randn(16, 4), torch.randint(0, 3, (16,)))] * 10
        >>> result = lr_find(model, data, num_steps=20, progress=False)
        >>> len(result.lrs) == len(result.losses) > 0
        True
    """
    if not 0 < start_lr < end_lr:
        raise ConfigError(f"lr_find needs 0 < start_lr < end_lr, got {start_lr} and {end_lr}")
    saved = copy.deepcopy(model.state_dict())
    trainer = Trainer(model, optimizer, loss_fn, log_every=1, max_steps=num_steps, max_epochs=10**6,
                      **{"progress": False, **trainer_kwargs})
    for group in trainer.optimizer.param_groups:
        group["lr"] = start_lr
    saved_optimizer = copy.deepcopy(trainer.optimizer.state_dict())
    gamma = (end_lr / start_lr) ** (1 / max(1, num_steps - 1))
    trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, lambda step: gamma**step)
    recorder = _RecordLoss(smoothing, diverge)
    trainer.callbacks.append(recorder)
    try:
        trainer.fit(train_loader)
    finally:
        model.load_state_dict(saved)
        trainer.optimizer.load_state_dict(saved_optimizer)
    losses = recorder.losses
    lrs = [start_lr * gamma**step for step in range(len(losses))]  # the rate each recorded step used
    if len(losses) < 3:
        raise ConfigError("lr_find stopped after fewer than 3 steps; lower start_lr or raise diverge")
    finite = [i for i, value in enumerate(losses) if math.isfinite(value)]
    lowest = min(finite, key=losses.__getitem__)
    # the steepest descent before the minimum, skipping the first tenth, where the smoothed loss is still noisy
    start = min(max(1, len(losses) // 10), max(0, lowest - 1))
    candidates = range(start, max(start + 1, lowest))
    steepest = min(candidates, key=lambda i: (losses[i + 1] - losses[i]) if i + 1 < len(losses) else 0.0)
    return LRFinderResult(lrs=lrs, losses=losses, minimum=lrs[lowest], suggestion=lrs[lowest] / 10,
                          steepest=lrs[steepest])
