"""Recover a pruned model's accuracy: distil it from the unpruned model (also on unlabelled images), fine-tune it, or choose."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from warmstart.data.loaders import InMemoryLoader
from warmstart.distill.recipe import KDSetting, choose_and_train, train_setting, unlabelled_inputs
from warmstart.errors import ConfigError
from warmstart.selection import (SELECTION_FILE, Selection, SelectionOptions, epochs_option, run_folder,
                                 selection_options)

METHODS = ("distill", "finetune", "auto")
DEFAULT_EPOCHS = 5  # at least: on few labels, as many epochs as MIN_STEPS optimizer steps take
MIN_STEPS = 300  # bench/recover_defaults.py: fine-tuning 100 digit labels gains 10 points from 50 to 150 steps


@dataclasses.dataclass
class RecoveryResult:
    """The outcome of :func:`recover`.

    Attributes:
        model: the recovered model (the same object that was passed in, trained in place).
        method: ``"distill"`` or ``"finetune"``: the one applied (or, for ``"auto"``, chosen).
        history: per-epoch metrics (``train_loss``, ``val_accuracy``, ...).
        trainer: the trainer (for ``evaluate`` and checkpoints; after ``"auto"``, the winner's,
            which trained a copy whose weights ``model`` received).
        scores: for ``"auto"``, each candidate's mean validation accuracy.
        selection: for ``"auto"``, the choice in full (every candidate's mean and standard error,
            how it was validated, the trial trainings and their cost), else ``None``.
    """

    model: nn.Module
    method: str
    history: list[dict[str, float]]
    trainer: Any
    scores: dict[str, float] = dataclasses.field(default_factory=dict)
    selection: Selection | None = None


def recovery_settings(unlabelled: bool, temperature: float = 4.0, alpha: float = 0.9) -> list[KDSetting]:
    """What ``recover(method="auto")`` tries, the first being the default kept unless beaten beyond noise.

    ``finetune`` (the labels alone: the plain way) and ``distill`` (the labels and the teacher);
    with unlabelled images also ``distill_unlabelled`` (the teacher labels every image, labelled or
    not) and its fair control ``finetune_same_steps`` (the labels alone for as many optimizer steps).
    """
    settings = [KDSetting("finetune", 0.0), KDSetting("distill", alpha, temperature)]
    if unlabelled:
        settings += [KDSetting("distill_unlabelled", 1.0, temperature, unlabelled=True),
                     KDSetting("finetune_same_steps", 0.0, same_steps=True)]
    return settings


def recover(pruned: nn.Module, train_loader: Iterable[Any], val_loader: Iterable[Any] | None = None, *,
            teacher: nn.Module | None = None, method: str = "distill",
            unlabelled: torch.Tensor | InMemoryLoader | None = None, epochs: int | None = None,
            optimizer: Any = None, temperature: float = 4.0, alpha: float | None = None, folds: int = 5,
            selection: SelectionOptions | Mapping[str, Any] | None = None,
            resume: str | os.PathLike | None = None, **trainer_kwargs: Any) -> RecoveryResult:
    """Train a pruned (or sparsified, or otherwise compressed) model back towards the original's accuracy.

    ``method="distill"`` trains with :class:`warmstart.distill.DistillTrainer`, the unpruned model
    as the teacher: ``loss = alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``
    (``alpha`` 0.9 by default). With ``unlabelled`` images the teacher labels those and the
    labelled ones alike and the student learns from its soft labels alone (``alpha`` is then 1):
    the clear winner when labels are scarce. ``method="finetune"`` is plain
    :class:`warmstart.Trainer` training on the labels, which can be as good or better when every
    image is labelled and the pruned model is not much weaker than the original
    (``bench/compress_digits.py`` and ``bench/compress_recovery_cv.py`` measure both).

    ``method="auto"`` chooses among :func:`recovery_settings` (fine-tuning, distillation on the
    labels, and with ``unlabelled`` images distillation on all of them and fine-tuning for as many
    optimizer steps, its fair control) through :func:`warmstart.selection.train_by_selection`, as
    :func:`warmstart.distill.distill` does: scored on ``val_loader`` when given, else, under 2,000
    labels, by stratified ``folds``-fold cross-validation over ``train_loader``'s labels, else on
    a stratified 20% held out. Fine-tuning is kept unless another way beats it beyond chance
    (:func:`warmstart.selection.choose`); the choice then trains ``epochs`` epochs on all of
    ``train_loader`` (the trials together cost about 2 such runs; ``result.selection`` gives every
    candidate's scores, what the choice could tell, and the cost). With an ``out_dir`` the folder
    is claimed before the first trial, the trials (in memory) and the choice are recorded in
    ``out_dir/selection.json`` as they finish, and the final run writes its checkpoints there;
    ``resume="last"`` continues that run without repeating recorded trials.

    An int8 model (from :func:`warmstart.compress.quantize`) is refused, as by every trainer: its
    int8 weights take no gradients. Recover the float model before quantizing it, or train the
    :func:`warmstart.compress.prepare_qat` copy (quantization-aware training).

    Args:
        pruned: the model to train (in place).
        train_loader: training batches ``(inputs, targets)``; for distillation also ``(inputs,)``
            with ``alpha=1`` (the teacher labels them). ``unlabelled`` and ``"auto"`` without a
            ``val_loader`` need an :class:`InMemoryLoader` (or, for ``"auto"``, a ``DataLoader``
            over a map-style data set) to split or extend.
        val_loader: evaluated after every epoch; ``"auto"`` chooses on it when given (labelled
            batches held out of training).
        teacher: the unpruned model, needed by ``"distill"`` and ``"auto"``. DistillTrainer moves
            it to the training device; its ``requires_grad`` flags and train/eval mode are restored.
        method: ``"distill"``, ``"finetune"`` or ``"auto"``.
        unlabelled: more inputs without labels (a tensor or an :class:`InMemoryLoader`) for the
            teacher to label.
        epochs: training epochs (default: enough for 300 optimizer steps on ``train_loader``, at
            least 5; ``config.max_epochs`` when a ``config`` is given); giving both ``epochs`` and
            the trainer option ``max_epochs`` is refused.
        optimizer: as for :class:`warmstart.Trainer` (default AdamW, lr 1e-3, weight decay 0.01).
        temperature: distillation temperature ``T``.
        alpha: weight of the distillation term (default 0.9 on labelled batches, 1 with
            ``unlabelled`` images or unlabelled batches).
        folds: folds of ``"auto"``'s cross-validation.
        selection: more options of ``"auto"``'s choice (:class:`warmstart.selection.SelectionOptions`
            or a dict of its fields); ``folds`` fills what it leaves out.
        resume: as for :meth:`warmstart.Trainer.fit`; with ``"auto"`` only ``"last"``.
        **trainer_kwargs: more trainer options (``scheduler`` defaults to cosine; ``seed``,
            ``device``, ``progress``, ``cache_teacher``, ``out_dir``, ...).

    Returns:
        A :class:`RecoveryResult`.

    Raises:
        ConfigError: an unknown method, ``"distill"`` or ``"auto"`` without a teacher, ``unlabelled``
            with fine-tuning, with ``alpha`` other than 1 or with a loader that is not an
            :class:`InMemoryLoader`, ``"auto"`` resuming from one checkpoint path, both ``epochs``
            and ``max_epochs``, a recorded choice whose candidates differ from this call's, or an
            int8 model.
        DataError: ``"auto"`` without ``val_loader`` on labels it cannot split, or too few.
        RunExistsError: ``"auto"`` into an ``out_dir`` that holds an earlier run, not resumed and
            without ``overwrite=True``.

    Examples:
        >>> import torch
        >>> from warmstart.models import mlp
        >>> teacher, student = mlp(16, [32], 3), mlp(16, [8], 3)
        >>> data = [(torch.randn(8, 16), torch.randint(0, 3, (8,)))] * 2
        >>> result = recover(student, data, teacher=teacher, epochs=1, progress=False)
        >>> len(result.history)
        1
    """
    extra = unlabelled_inputs(unlabelled)
    _check_method(method, teacher, train_loader, extra, alpha, resume)
    epochs = _epochs(epochs, trainer_kwargs, train_loader, extra)
    options = {"optimizer": optimizer if optimizer is not None else {"name": "adamw", "lr": 1e-3, "weight_decay": 0.01},
               "scheduler": {"name": "cosine"}, **trainer_kwargs}
    if method == "auto":
        settings = recovery_settings(extra is not None, temperature, 0.9 if alpha is None else alpha)
        return _choose_and_train(pruned, teacher, settings, train_loader, val_loader, extra, epochs,
                                 selection_options(selection, folds=folds), resume, options)
    if method == "finetune":
        setting = KDSetting("finetune", 0.0)
    else:
        alpha = alpha if alpha is not None else 1.0 if extra is not None or _unlabelled(train_loader) else 0.9
        setting = KDSetting("distill", alpha, temperature, unlabelled=extra is not None)
    with _restored(teacher):
        trainer = train_setting(pruned, teacher, setting, train_loader, extra, epochs, None, val_loader, options, resume)
    return RecoveryResult(pruned, method, trainer.history, trainer)


def _epochs(epochs: int | None, trainer_kwargs: dict[str, Any], train: Any, extra: torch.Tensor | None = None) -> int:
    """The epochs to train: ``epochs``, the option ``max_epochs`` (removed from ``trainer_kwargs``), the config's, or
    the default: ``max(5, ceil(300 / batches per epoch))`` (5 when the loader has no length), the batches counting
    the ``unlabelled`` images an epoch also trains on.

    Both ``epochs`` and ``max_epochs`` is a conflict, not a silent choice.
    """
    epochs = epochs_option(epochs, trainer_kwargs, "recover")
    if epochs is not None:
        return epochs
    config = trainer_kwargs.get("config")
    if config is not None:
        return config.max_epochs
    batches = len(train) if hasattr(train, "__len__") else 0
    if extra is not None and isinstance(train, InMemoryLoader):  # an epoch runs over the unlabelled images too
        batches = math.ceil((len(train.inputs) + len(extra)) / train.batch_size)
    return max(DEFAULT_EPOCHS, math.ceil(MIN_STEPS / batches)) if batches else DEFAULT_EPOCHS


def _choose_and_train(pruned: nn.Module, teacher: nn.Module, settings: list[KDSetting], train: Any, val: Any,
                      extra: torch.Tensor | None, epochs: int, selection: SelectionOptions, resume: str | None,
                      options: dict[str, Any]) -> RecoveryResult:
    """``method="auto"``: :func:`warmstart.distill.recipe.choose_and_train`, the teacher left as it was."""
    top, overwrite = run_folder(None, options)
    options = {k: v for k, v in options.items() if k not in ("out_dir", "overwrite")}
    with _restored(teacher):
        picked, trainer = choose_and_train(pruned, teacher, settings, train, extra, val, epochs, options,
                                           caller="recover", out_dir=top, overwrite=overwrite, resume=resume,
                                           selection=selection)
    scores = {name: score.mean for name, score in picked.scores.items()}
    return RecoveryResult(pruned, picked.choice, trainer.history, trainer, scores, picked)


def _unlabelled(loader: Any) -> bool:
    """True for an :class:`InMemoryLoader` without labels (the teacher labels its batches)."""
    return isinstance(loader, InMemoryLoader) and loader.targets is None


def _check_method(method: str, teacher: nn.Module | None, train: Any, extra: torch.Tensor | None,
                  alpha: float | None, resume: str | os.PathLike | None) -> None:
    if method not in METHODS:
        raise ConfigError(f"unknown recovery method '{method}'; valid: {', '.join(METHODS)}")
    if method in ("distill", "auto") and teacher is None:
        raise ConfigError(f"method='{method}' needs the unpruned model as teacher=...; or use method='finetune' to "
                          "train on the labels alone")
    if extra is not None:
        if method == "finetune":
            raise ConfigError("unlabelled images need a teacher to label them: use method='distill' or 'auto' with "
                              "teacher=..., or drop unlabelled= to fine-tune on the labels")
        if method == "distill" and alpha not in (None, 1, 1.0):
            raise ConfigError(f"with unlabelled images the student learns from the teacher's soft labels alone, so "
                              f"alpha must be 1, got {alpha}: drop alpha=, or drop unlabelled= to mix the labels in")
        if not isinstance(train, InMemoryLoader) or train.targets is None:
            raise ConfigError("unlabelled= adds images to a labelled InMemoryLoader (their tensors are joined); got "
                              f"{type(train).__name__}{' without labels' if _unlabelled(train) else ''}. Pass "
                              "the labelled data as warmstart.data.InMemoryLoader(inputs, labels, ...)")
    if method == "auto" and resume not in (None, "last"):
        raise ConfigError(f"method='auto' records its choice in out_dir/{SELECTION_FILE} and resumes that run with "
                          f"resume='last', not from one checkpoint ({resume})")


@contextlib.contextmanager
def _restored(teacher: nn.Module | None) -> Iterator[None]:
    """Put back the teacher's requires_grad flags and mode, which DistillTrainer changes to freeze it."""
    if teacher is None:
        yield
        return
    flags = [p.requires_grad for p in teacher.parameters()]
    was_training = teacher.training
    try:
        yield
    finally:
        for param, flag in zip(teacher.parameters(), flags):
            param.requires_grad_(flag)
        teacher.train(was_training)
