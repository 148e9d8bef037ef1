"""Recover a pruned model's accuracy: distil it from the unpruned model, or fine-tune it on the labels."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable, Iterator
from typing import Any

from torch import nn

from warmstart.distill import DistillTrainer
from warmstart.errors import ConfigError
from warmstart.trainer import Trainer

METHODS = ("distill", "finetune")


@dataclasses.dataclass
class RecoveryResult:
    """The outcome of :func:`recover`.

    Attributes:
        model: the recovered model (the same object that was passed in, trained in place).
        method: ``"distill"`` or ``"finetune"``.
        history: per-epoch metrics (``train_loss``, ``val_accuracy``, ...).
        trainer: the trainer (for ``evaluate`` and checkpoints).
    """

    model: nn.Module
    method: str
    history: list[dict[str, float]]
    trainer: Any


def recover(pruned: nn.Module, train_loader: Iterable[Any], val_loader: Iterable[Any] | None = None, *,
            teacher: nn.Module | None = None, method: str = "distill", epochs: int = 5, optimizer: Any = None,
            temperature: float = 4.0, alpha: float = 0.9, **trainer_kwargs: Any) -> RecoveryResult:
    """Train a pruned (or sparsified, or otherwise compressed) model back towards the original's accuracy.

    ``method="distill"`` trains with :class:`warmstart.distill.DistillTrainer`, the unpruned model
    as the teacher: ``loss = alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``.
    The teacher's full output distribution carries more than the labels, which is why it is the
    usual and strongest recovery (``bench/compress_digits.py`` measures it against
    ``method="finetune"``, plain :class:`warmstart.Trainer` training on the labels).

    Args:
        pruned: the model to train (in place).
        train_loader: training batches ``(inputs, targets)``; for distillation also ``(inputs,)``
            with ``alpha=1`` (the teacher labels them).
        val_loader: evaluated after every epoch.
        teacher: the unpruned model, needed by ``"distill"``. DistillTrainer moves it to the
            training device; its ``requires_grad`` flags and train/eval mode are restored after.
        method: ``"distill"`` or ``"finetune"``.
        epochs: training epochs.
        optimizer: as for :class:`warmstart.Trainer` (default AdamW, lr 1e-3, weight decay 0.01).
        temperature: distillation temperature ``T``.
        alpha: weight of the distillation term.
        **trainer_kwargs: more trainer options (``scheduler`` defaults to cosine; ``seed``,
            ``device``, ``progress``, ``cache_teacher``, ...).

    Returns:
        A :class:`RecoveryResult`.

    Raises:
        ConfigError: an unknown method, or ``"distill"`` without a teacher.

    Example:
        >>> import torch
        >>> from warmstart.models import mlp
        >>> teacher, student = mlp(16, [32], 3), mlp(16, [8], 3)
        >>> data = [(torch.randn(8, 16), torch.randint(0, 3, (8,)))] * 2
        >>> result = recover(student, data, teacher=teacher, epochs=1, progress=False)
        >>> len(result.history)
        1
    """
    _check_method(method, teacher)
    optimizer = optimizer if optimizer is not None else {"name": "adamw", "lr": 1e-3, "weight_decay": 0.01}
    options = {"scheduler": {"name": "cosine"}, "max_epochs": epochs, **trainer_kwargs}
    if method == "finetune":
        trainer = Trainer(pruned, optimizer, **options)
        history = trainer.fit(train_loader, val_loader)
    else:
        with _restored(teacher):
            trainer = DistillTrainer(pruned, teacher, optimizer, temperature=temperature, alpha=alpha, **options)
            history = trainer.fit(train_loader, val_loader)
    return RecoveryResult(pruned, method, history, trainer)


def _check_method(method: str, teacher: nn.Module | None) -> None:
    if method not in METHODS:
        raise ConfigError(f"unknown recovery method '{method}'; valid: {', '.join(METHODS)}")
    if method == "distill" and teacher is None:
        raise ConfigError("method='distill' needs the unpruned model as teacher=...; or use method='finetune' to "
                          "train on the labels alone")


@contextlib.contextmanager
def _restored(teacher: nn.Module) -> Iterator[None]:
    """Put back the teacher's requires_grad flags and mode, which DistillTrainer changes to freeze it."""
    flags = [p.requires_grad for p in teacher.parameters()]
    was_training = teacher.training
    try:
        yield
    finally:
        for param, flag in zip(teacher.parameters(), flags):
            param.requires_grad_(flag)
        teacher.train(was_training)
