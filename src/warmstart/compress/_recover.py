"""Recover a pruned model's accuracy: distil it from the unpruned model, or fine-tune it on the labels."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from torch import nn

from warmstart import distributed
from warmstart._run_dir import LOCK_NAME, acquire_lock, check_fresh_run, check_out_dir, release_lock
from warmstart.distill import DistillTrainer
from warmstart.errors import ConfigError
from warmstart.trainer import Trainer

METHODS = ("distill", "finetune", "auto")
CANDIDATES = ("finetune", "distill")  # what "auto" trains, in this order; each in its own sub-folder of out_dir
DEFAULT_EPOCHS = 5


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
            teacher: nn.Module | None = None, method: str = "distill", epochs: int | None = None,
            optimizer: Any = None, temperature: float = 4.0, alpha: float = 0.9,
            resume: str | os.PathLike | None = None, **trainer_kwargs: Any) -> RecoveryResult:
    """Train a pruned (or sparsified, or otherwise compressed) model back towards the original's accuracy.

    ``method="distill"`` trains with :class:`warmstart.distill.DistillTrainer`, the unpruned model
    as the teacher: ``loss = alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``.
    The teacher's full output distribution carries more than the labels, which is why it is the
    usual recovery, and the clear winner when labels are scarce: it also learns from unlabelled
    images. ``method="finetune"`` is plain :class:`warmstart.Trainer` training on the labels,
    which can be as good or better when every image is labelled and the pruned model is not
    much weaker than the original (``bench/compress_digits.py`` and
    ``bench/compress_recovery_cv.py`` measure both). ``method="auto"`` trains a copy with each
    and keeps the one with the better accuracy on ``val_loader`` (twice the training time); with
    an ``out_dir``, each candidate trains in its own sub-folder (``out_dir/finetune``,
    ``out_dir/distill``) and the winner's files are then copied into ``out_dir`` itself, so
    ``out_dir/last.safetensors`` holds the returned model.

    An int8 model (from :func:`warmstart.compress.quantize`) is refused, as by every trainer: its
    int8 weights take no gradients. Recover the float model before quantizing it, or train the
    :func:`warmstart.compress.prepare_qat` copy (quantization-aware training).

    Args:
        pruned: the model to train (in place).
        train_loader: training batches ``(inputs, targets)``; for distillation also ``(inputs,)``
            with ``alpha=1`` (the teacher labels them).
        val_loader: evaluated after every epoch; needed by ``"auto"``, which chooses on it
            (labelled batches held out of training).
        teacher: the unpruned model, needed by ``"distill"``. DistillTrainer moves it to the
            training device; its ``requires_grad`` flags and train/eval mode are restored after.
        method: ``"distill"``, ``"finetune"`` or ``"auto"``.
        epochs: training epochs (default 5, or ``config.max_epochs`` when a ``config`` is given);
            giving both ``epochs`` and the trainer option ``max_epochs`` is refused.
        optimizer: as for :class:`warmstart.Trainer` (default AdamW, lr 1e-3, weight decay 0.01).
        temperature: distillation temperature ``T``.
        alpha: weight of the distillation term.
        resume: as for :meth:`warmstart.Trainer.fit`; with ``"auto"`` only ``"last"``, which
            continues each candidate's run in its own sub-folder.
        **trainer_kwargs: more trainer options (``scheduler`` defaults to cosine; ``seed``,
            ``device``, ``progress``, ``cache_teacher``, ...).

    Returns:
        A :class:`RecoveryResult`.

    Raises:
        ConfigError: an unknown method, ``"distill"`` or ``"auto"`` without a teacher,
            ``"auto"`` without ``val_loader`` (or resuming from one checkpoint path), both
            ``epochs`` and ``max_epochs``, or an int8 model.
        RunExistsError: ``"auto"`` into an ``out_dir`` that holds an earlier run, not resumed and
            without ``overwrite=True``.

    Example:
        >>> import torch
        >>> from warmstart.models import mlp
        >>> teacher, student = mlp(16, [32], 3), mlp(16, [8], 3)
        >>> data = [(torch.randn(8, 16), torch.randint(0, 3, (8,)))] * 2
        >>> result = recover(student, data, teacher=teacher, epochs=1, progress=False)
        >>> len(result.history)
        1
    """
    _check_method(method, teacher, val_loader, resume)
    trainer_kwargs = {**trainer_kwargs, **_epoch_option(epochs, trainer_kwargs)}
    if method == "auto":
        return _best_of_both(pruned, train_loader, val_loader, teacher=teacher, optimizer=optimizer,
                             temperature=temperature, alpha=alpha, resume=resume, **trainer_kwargs)
    optimizer = optimizer if optimizer is not None else {"name": "adamw", "lr": 1e-3, "weight_decay": 0.01}
    options = {"scheduler": {"name": "cosine"}, **trainer_kwargs}
    if method == "finetune":
        trainer = Trainer(pruned, optimizer, **options)
        history = trainer.fit(train_loader, val_loader, resume=resume)
    else:
        with _restored(teacher):
            trainer = DistillTrainer(pruned, teacher, optimizer, temperature=temperature, alpha=alpha, **options)
            history = trainer.fit(train_loader, val_loader, resume=resume)
    return RecoveryResult(pruned, method, history, trainer)


def _epoch_option(epochs: int | None, trainer_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The ``max_epochs`` trainer option that ``epochs`` means; both given is a conflict, not a silent choice."""
    if "max_epochs" in trainer_kwargs:
        if epochs is not None:
            raise ConfigError(f"recover got both epochs={epochs} and max_epochs={trainer_kwargs['max_epochs']}, which "
                              "say the same thing; pass one of them")
        return {}
    if epochs is None:
        return {} if trainer_kwargs.get("config") is not None else {"max_epochs": DEFAULT_EPOCHS}
    return {"max_epochs": epochs}


def _best_of_both(pruned: nn.Module, train_loader: Iterable[Any], val_loader: Iterable[Any], *,
                  resume: str | os.PathLike | None, **options: Any) -> RecoveryResult:
    """Recover a copy by each method; give ``pruned`` the weights of the one that validates better.

    With an ``out_dir``, each method trains in its own sub-folder; the folder is claimed and checked
    for an earlier run (unless resumed) before either starts, and the winner's files are copied on top.
    """
    config = options.get("config")
    out_dir = options.get("out_dir", config.out_dir if config is not None else None)
    overwrite = options.get("overwrite", config.overwrite if config is not None else False)
    top = None if out_dir is None else check_out_dir(out_dir)
    lock = acquire_lock(top) if top is not None and distributed.is_main_process() else None
    try:
        if lock is not None and resume is None:
            check_fresh_run(top, overwrite, stages=CANDIDATES)  # before minutes of training, not after
        results = {}
        for method in CANDIDATES:
            folder = {} if top is None else {"out_dir": top / method}
            results[method] = recover(copy.deepcopy(pruned), train_loader, val_loader, method=method, resume=resume,
                                      **{**options, **folder})
        scores = {method: _last_accuracy(result, method) for method, result in results.items()}
        best = results[max(scores, key=scores.get)]  # a tie keeps fine-tuning, the simpler of the two
        if lock is not None:
            _copy_run(top / best.method, top)
    finally:
        if lock is not None:
            release_lock(lock)
    pruned.load_state_dict(best.model.state_dict())
    return RecoveryResult(pruned, best.method, best.history, best.trainer, scores)


def _copy_run(source: Path, target: Path) -> None:
    """Copy the winning candidate's run files (checkpoints, weights, metrics, config) into ``target``."""
    for path in source.iterdir():
        if path.name == LOCK_NAME:
            continue
        if path.is_dir():
            shutil.copytree(path, target / path.name, dirs_exist_ok=True)
        else:
            shutil.copy2(path, target / path.name)


def _last_accuracy(result: RecoveryResult, method: str) -> float:
    accuracy = result.history[-1].get("val_accuracy") if result.history else None
    if accuracy is None:
        raise ConfigError(f"method='auto' needs a labelled val_loader to choose by accuracy; {method}'s validation "
                          "reported none (are its batches (inputs, targets)?)")
    return float(accuracy)


def _check_method(method: str, teacher: nn.Module | None, val_loader: Iterable[Any] | None,
                  resume: str | os.PathLike | None) -> None:
    if method not in METHODS:
        raise ConfigError(f"unknown recovery method '{method}'; valid: {', '.join(METHODS)}")
    if method in ("distill", "auto") and teacher is None:
        raise ConfigError(f"method='{method}' needs the unpruned model as teacher=...; or use method='finetune' to "
                          "train on the labels alone")
    if method == "auto" and val_loader is None:
        raise ConfigError("method='auto' chooses between fine-tuning and distillation on validation data: pass "
                          "val_loader= (labelled batches held out of training, e.g. from "
                          "warmstart.data.split_loader(train_loader))")
    if method == "auto" and resume not in (None, "last"):
        raise ConfigError(f"method='auto' trains two runs, in out_dir/finetune and out_dir/distill, so it resumes with "
                          f"resume='last' (each run from its own folder), not from one checkpoint ({resume})")


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
