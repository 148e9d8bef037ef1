"""Recover a pruned model's accuracy: distil it from the unpruned model, or fine-tune it on the labels."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Iterable, Iterator
from typing import Any

from torch import nn

from warmstart.distill import DistillTrainer
from warmstart.errors import ConfigError
from warmstart.trainer import Trainer

METHODS = ("distill", "finetune", "auto")


@dataclasses.dataclass
class RecoveryResult:
    """The outcome of :func:`recover`.

    Attributes:
        model: the recovered model (the same object that was passed in, trained in place).
        method: ``"distill"`` or ``"finetune"``: the one applied (or, for ``"auto"``, chosen).
        history: per-epoch metrics (``train_loss``, ``val_accuracy``, ...).
        trainer: the trainer (for ``evaluate`` and checkpoints; after ``"auto"``, the winner's,
            which trained a copy whose weights ``model`` received).
        scores: for ``"auto"``, each method's validation accuracy after its last epoch.
    """

    model: nn.Module
    method: str
    history: list[dict[str, float]]
    trainer: Any
    scores: dict[str, float] = dataclasses.field(default_factory=dict)


def recover(pruned: nn.Module, train_loader: Iterable[Any], val_loader: Iterable[Any] | None = None, *,
            teacher: nn.Module | None = None, method: str = "distill", epochs: int = 5, optimizer: Any = None,
            temperature: float = 4.0, alpha: float = 0.9, **trainer_kwargs: Any) -> RecoveryResult:
    """Train a pruned (or sparsified, or otherwise compressed) model back towards the original's accuracy.

    ``method="distill"`` trains with :class:`warmstart.distill.DistillTrainer`, the unpruned model
    as the teacher: ``loss = alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``.
    The teacher's full output distribution carries more than the labels, which is why it is the
    usual recovery, and the clear winner when labels are scarce: it also learns from unlabelled
    images. ``method="finetune"`` is plain :class:`warmstart.Trainer` training on the labels,
    which can be as good or better when every image is labelled and the pruned model is not
    much weaker than the original (``bench/compress_digits.py`` and
    ``bench/compress_recovery_cv.py`` measure both). ``method="auto"`` trains a copy with each
    and keeps the one with the better accuracy on ``val_loader`` (twice the training time).

    Args:
        pruned: the model to train (in place).
        train_loader: training batches ``(inputs, targets)``; for distillation also ``(inputs,)``
            with ``alpha=1`` (the teacher labels them).
        val_loader: evaluated after every epoch; needed by ``"auto"``, which chooses on it
            (labelled batches held out of training).
        teacher: the unpruned model, needed by ``"distill"``. DistillTrainer moves it to the
            training device; its ``requires_grad`` flags and train/eval mode are restored after.
        method: ``"distill"``, ``"finetune"`` or ``"auto"``.
        epochs: training epochs.
        optimizer: as for :class:`warmstart.Trainer` (default AdamW, lr 1e-3, weight decay 0.01).
        temperature: distillation temperature ``T``.
        alpha: weight of the distillation term.
        **trainer_kwargs: more trainer options (``scheduler`` defaults to cosine; ``seed``,
            ``device``, ``progress``, ``cache_teacher``, ...).

    Returns:
        A :class:`RecoveryResult`.

    Raises:
        ConfigError: an unknown method, ``"distill"`` or ``"auto"`` without a teacher, or
            ``"auto"`` without ``val_loader``.

    Example:
        >>> import torch
        >>> from warmstart.models import mlp
        >>> teacher, student = mlp(16, [32], 3), mlp(16, [8], 3)
        >>> data = [(torch.randn(8, 16), torch.randint(0, 3, (8,)))] * 2
        >>> result = recover(student, data, teacher=teacher, epochs=1, progress=False)
        >>> len(result.history)
        1
    """
    _check_method(method, teacher, val_loader)
    if method == "auto":
        return _best_of_both(pruned, train_loader, val_loader, teacher=teacher, epochs=epochs, optimizer=optimizer,
                             temperature=temperature, alpha=alpha, **trainer_kwargs)
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


def _best_of_both(pruned: nn.Module, train_loader: Iterable[Any], val_loader: Iterable[Any],
                  **options: Any) -> RecoveryResult:
    """Recover a copy by each method; give ``pruned`` the weights of the one that validates better."""
    results = {}
    for method in ("finetune", "distill"):
        results[method] = recover(copy.deepcopy(pruned), train_loader, val_loader, method=method, **options)
    scores = {method: _last_accuracy(result, method) for method, result in results.items()}
    best = results[max(scores, key=scores.get)]  # a tie keeps fine-tuning, the simpler of the two
    pruned.load_state_dict(best.model.state_dict())
    return RecoveryResult(pruned, best.method, best.history, best.trainer, scores)


def _last_accuracy(result: RecoveryResult, method: str) -> float:
    accuracy = result.history[-1].get("val_accuracy") if result.history else None
    if accuracy is None:
        raise ConfigError(f"method='auto' needs a labelled val_loader to choose by accuracy; {method}'s validation "
                          "reported none (are its batches (inputs, targets)?)")
    return float(accuracy)


def _check_method(method: str, teacher: nn.Module | None, val_loader: Iterable[Any] | None) -> None:
    if method not in METHODS:
        raise ConfigError(f"unknown recovery method '{method}'; valid: {', '.join(METHODS)}")
    if method in ("distill", "auto") and teacher is None:
        raise ConfigError(f"method='{method}' needs the unpruned model as teacher=...; or use method='finetune' to "
                          "train on the labels alone")
    if method == "auto" and val_loader is None:
        raise ConfigError("method='auto' chooses between fine-tuning and distillation on validation data: pass "
                          "val_loader= (labelled batches held out of training, e.g. from "
                          "warmstart.data.split_loader(train_loader))")


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
