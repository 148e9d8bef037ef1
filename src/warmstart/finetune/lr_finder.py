"""A learning-rate range test: sweep the rate exponentially and record the loss (Leslie Smith's LR finder)."""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from warmstart.callbacks import Callback
from warmstart.errors import ConfigError
from warmstart.trainer import Trainer


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

    Examples:
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
