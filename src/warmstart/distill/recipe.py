"""One-call distillation that uses what helps: the teacher labels unlabelled data, and KD is chosen by validation."""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from warmstart import distributed
from warmstart.data.augment import is_random
from warmstart.data.loaders import InMemoryLoader
from warmstart.distill.trainer import DistillTrainer
from warmstart.errors import ConfigError
from warmstart.selection import (Selection, SelectionOptions, epochs_option, run_folder, sample_count,
                                 selection_options, train_by_selection, trainer_option, validation_accuracy)
from warmstart.trainer import Trainer


@dataclasses.dataclass(frozen=True)
class KDSetting:
    """One way to train the student, as :func:`distill` tries it.

    Attributes:
        name: its name in results.
        alpha: weight of the distillation term (0: hard labels only, the control).
        temperature: the softmax temperature ``T``.
        unlabelled: learn from the labelled and the unlabelled images, all labelled by the teacher
            (``alpha`` must then be 1).
        same_steps: train for as many optimizer steps as a setting that learns from the unlabelled
            images too (its epochs times ``steps(labelled + unlabelled) / steps(labelled)``): with
            ``alpha=0``, the fair control of those settings, which take more steps per epoch.
    """

    name: str
    alpha: float
    temperature: float = 4.0
    unlabelled: bool = False
    same_steps: bool = False


def default_settings(unlabelled: bool) -> list[KDSetting]:
    """Hard labels (the control and the default), KD on the labels at two weights, and, with unlabelled data, KD on all of it at T=1 and 4 and its control: hard labels for as many optimizer steps."""
    settings = [KDSetting("hard_labels", 0.0), KDSetting("kd_alpha0.5_T4", 0.5), KDSetting("kd_alpha0.9_T4", 0.9)]
    if unlabelled:
        settings += [KDSetting("unlabelled_T1", 1.0, 1.0, True), KDSetting("unlabelled_T4", 1.0, 4.0, True),
                     KDSetting("hard_labels_same_steps", 0.0, same_steps=True)]
    return settings


@dataclasses.dataclass
class DistillResult:
    """The outcome of :func:`distill`.

    Attributes:
        model: the trained student (the same object that was passed in).
        history: per-epoch metrics of the final training.
        trainer: the final trainer (for ``evaluate`` and checkpoints).
        choice: the setting trained on all the data.
        scores: mean validation accuracy of each setting (empty without selection).
        selection: the choice in full: each setting's mean and standard error over the folds, how it
            was validated, the trainings it took and their cost (``None`` without selection).
    """

    model: nn.Module
    history: list[dict[str, Any]]
    trainer: Trainer
    choice: str
    scores: dict[str, float] = dataclasses.field(default_factory=dict)
    selection: Selection | None = None


def distill(student: nn.Module, teacher: nn.Module, labelled: InMemoryLoader,
            unlabelled: torch.Tensor | InMemoryLoader | None = None, val_loader: Iterable[Any] | None = None, *,
            epochs: int | None = None, optimizer: Any = None, scheduler: Any = None,
            settings: Sequence[KDSetting] | None = None, select: bool = True, val_fraction: float = 0.2, folds: int = 5,
            selection: SelectionOptions | Mapping[str, Any] | None = None,
            out_dir: str | os.PathLike | None = None, resume: str | None = None,
            **trainer_kwargs: Any) -> DistillResult:
    """Train ``student`` from ``teacher`` the way that validates best; hard labels unless beaten beyond chance.

    Each setting of :func:`default_settings` trains a copy of the student and is scored through
    :func:`warmstart.selection.train_by_selection` (on ``val_loader``, else by stratified
    ``folds``-fold cross-validation under 2,000 labels, else on ``val_fraction`` held out); hard
    labels, the first setting, are kept unless another beats them beyond chance
    (:func:`warmstart.selection.choose`), and the choice trains ``epochs`` epochs on everything. The
    trials cost about 2 final runs (``result.selection.cost``; the settings that learn from, or count
    steps by, ``unlabelled`` images cost ``(labelled + unlabelled) / labelled`` times as much per
    epoch). With ``out_dir`` the trials and the choice are recorded in ``out_dir/selection.json``
    and ``resume="last"`` continues a stopped call without repeating them.

    With ``unlabelled`` images the teacher labels them together with the labelled ones (its
    logits cached once when the data is not randomly augmented, :func:`warmstart.data.is_random`):
    the setting that helps most in our measurements (``bench/distill_mnist.py``). Those settings
    take more optimizer steps per epoch, so ``hard_labels_same_steps`` (hard labels for as many
    steps) is scored beside them: a distillation gain shows against it too.

    Args:
        student: the network to train (changed in place).
        teacher: the trained network.
        labelled: labelled training batches (an :class:`InMemoryLoader`).
        unlabelled: more inputs without labels (a tensor or an unlabelled :class:`InMemoryLoader`).
        val_loader: labelled validation batches; without one, part of ``labelled`` is held out.
        epochs: epochs of the final training (default 30; the trainer option ``max_epochs`` is the
            same thing).
        optimizer: as for :class:`warmstart.Trainer` (AdamW, lr 3e-3 when ``None``).
        scheduler: as for :class:`warmstart.Trainer` (cosine when ``None``).
        settings: the settings to try (default :func:`default_settings`).
        select: choose by validation; ``False`` trains the first setting.
        val_fraction: share of the labels held out for the choice when there is no ``val_loader``
            and 2,000 labels or more.
        folds: folds of the cross-validation on fewer labels.
        selection: more options of the choice (:class:`warmstart.selection.SelectionOptions` or a
            dict of its fields); ``folds`` and ``val_fraction`` fill what it leaves out.
        out_dir: folder of the choice's record and the final training's checkpoints and logs.
        resume: ``"last"`` continues the call recorded in ``out_dir``.
        **trainer_kwargs: more :class:`warmstart.Trainer` options (``seed``, ``overwrite``, ...).

    Returns:
        A :class:`DistillResult`.

    Raises:
        ConfigError: no settings, an unlabelled setting without unlabelled data, loaders of
            another kind than :class:`InMemoryLoader` / tensors, unlabelled inputs of another shape
            than the labelled ones, both ``epochs`` and ``max_epochs``, or a ``resume`` other than ``"last"``.
        DataError: targets that are not class labels.
        RunExistsError: ``out_dir`` holds an earlier run, not resumed and without ``overwrite=True``.

    Examples:
        >>> from warmstart.models import mlp
        >>> x, y = torch.randn(40, 8), torch.randint(0, 3, (40,))
        >>> result = distill(mlp(8, [4], 3), mlp(8, [16], 3), InMemoryLoader(x, y, batch_size=8), epochs=2,
        ...                  unlabelled=torch.randn(40, 8), progress=False)
        >>> result.choice in result.scores
        True
    """
    epochs = epochs_option(epochs, trainer_kwargs, "distill") or 30
    extra = unlabelled_inputs(unlabelled)
    tried = list(settings) if settings is not None else default_settings(extra is not None)
    _check(labelled, tried, extra)
    top, overwrite = run_folder(out_dir, trainer_kwargs)
    options = {"optimizer": optimizer or {"name": "adamw", "lr": 3e-3}, "scheduler": scheduler or {"name": "cosine"},
               **{k: v for k, v in trainer_kwargs.items() if k not in ("out_dir", "overwrite")}}
    picked, trainer = choose_and_train(student, teacher, tried if select else tried[:1], labelled, extra, val_loader,
                                       epochs, options, caller="distill", out_dir=top, overwrite=overwrite,
                                       resume=resume,
                                       selection=selection_options(selection, val_fraction=val_fraction, folds=folds))
    scores = {} if picked is None else {name: score.mean for name, score in picked.scores.items()}
    return DistillResult(model=student, history=trainer.history, trainer=trainer,
                         choice=tried[0].name if picked is None else picked.choice, scores=scores, selection=picked)


def choose_and_train(student: nn.Module, teacher: nn.Module, tried: Sequence[KDSetting], labelled: Any,
                     extra: torch.Tensor | None, val: Any, epochs: int, options: dict[str, Any], *, caller: str,
                     out_dir: Path | None, overwrite: bool, resume: str | None,
                     selection: SelectionOptions = SelectionOptions()) -> tuple[Selection | None, Trainer]:
    """Score every setting on a copy of the student, then train the choice on everything (the first is the default).

    Shared by :func:`distill` and :func:`warmstart.compress.recover`, through
    :func:`warmstart.selection.train_by_selection`: ``labelled`` is an :class:`InMemoryLoader` or a
    ``DataLoader`` over a map-style data set; the trials' teacher logits live in a temporary folder.
    """
    by_name = {s.name: s for s in tried}
    size = sample_count(labelled)
    more = 1.0 if extra is None else (size + len(extra)) / size
    with tempfile.TemporaryDirectory(prefix="warmstart-distill-") as caches:
        splits: dict[int, int] = {}  # one teacher cache per training split, shared by the settings that train on it

        def trial(name: str, fit_on: Any, score_on: Any, trial_epochs: int, seed: int) -> float:
            setting = by_name[name]
            cache = Path(caches) / f"split{splits.setdefault(id(fit_on), len(splits))}-{setting.unlabelled}.npy"
            trainer = train_setting(copy.deepcopy(student), teacher, setting, fit_on, extra, trial_epochs, cache, None,
                                    {**options, "progress": False, "seed": seed, "out_dir": None, "overwrite": False})
            return validation_accuracy(trainer.evaluate(score_on), caller)

        def final(name: str, seed: int | None, resume: str | None) -> Trainer:
            cache = None if out_dir is not None else Path(caches) / f"all-{by_name[name].unlabelled}.npy"
            return train_setting(student, teacher, by_name[name], labelled, extra, epochs, cache, val,
                                 {**options, **({} if seed is None else {"seed": seed}),
                                  "out_dir": None if out_dir is None else str(out_dir), "overwrite": overwrite}, resume)

        return train_by_selection(
            list(by_name), trial, final, labelled, epochs, caller=caller, val_loader=val, out_dir=out_dir,
            overwrite=overwrite, resume=resume, seed=trainer_option(options, "seed"),
            device=trainer_option(options, "device", "auto"), options=selection,
            cost_of={s.name: more if s.unlabelled or s.same_steps else 1.0 for s in tried},
            progress=bool(trainer_option(options, "progress", True)))


def train_setting(student: nn.Module, teacher: nn.Module, setting: KDSetting, labelled: Any,
                  extra: torch.Tensor | None, epochs: int, cache: Path | None, val: Any, options: dict[str, Any],
                  resume: str | os.PathLike | None = None) -> Trainer:
    """Train ``student`` under one setting and return its trainer (shared by :func:`distill` and ``recover``).

    Hard labels (``alpha=0``) train with a plain :class:`warmstart.Trainer` and no teacher. The
    teacher's logits are cached in ``cache`` when the inputs are an :class:`InMemoryLoader` whose
    transform is deterministic (a ``cache_teacher`` option decides otherwise).
    """
    options = dict(options)
    if setting.alpha == 0:  # hard labels alone: no teacher at all, as a user without one would train
        options.pop("cache_teacher", None)
        trainer = Trainer(student, max_epochs=_same_steps(labelled, extra, epochs) if setting.same_steps else epochs,
                          **options)
        trainer.fit(labelled, val, resume=resume)
        return trainer
    train = labelled
    if setting.unlabelled:
        inputs = torch.cat([labelled.inputs, extra.to(labelled.inputs.device)])
        train = InMemoryLoader(inputs, None, batch_size=labelled.batch_size, shuffle=labelled.shuffle,
                               seed=labelled.seed, transform=labelled.transform)
    offline = options.pop("cache_teacher", None)
    if offline is None:  # cache the teacher's logits only where they stay right: a random transform gets per-epoch logits
        offline = (isinstance(train, InMemoryLoader) and (cache is not None or options.get("out_dir") is not None)
                   and not is_random(train.transform, probe=train.inputs[:train.batch_size])
                   and not distributed.is_distributed())
    flags, mode = [p.requires_grad for p in teacher.parameters()], teacher.training
    try:  # the trainer freezes the teacher; the caller's network is given back as it came (still trainable)
        trainer = DistillTrainer(student, teacher, temperature=setting.temperature, alpha=setting.alpha,
                                 cache_teacher=offline, cache_path=str(cache) if offline and cache is not None else None,
                                 max_epochs=epochs, **options)
        trainer.fit(train, val, resume=resume)
    finally:
        for parameter, flag in zip(teacher.parameters(), flags, strict=True):
            parameter.requires_grad_(flag)
        teacher.train(mode)
    return trainer


def _same_steps(labelled: Any, extra: torch.Tensor, epochs: int) -> int:
    """Epochs on ``labelled`` that take as many optimizer steps as ``epochs`` on ``labelled`` and ``extra`` together."""
    def steps(n: int) -> int:
        return max(1, n // labelled.batch_size if labelled.drop_last else math.ceil(n / labelled.batch_size))

    size = sample_count(labelled)
    return max(1, round(epochs * steps(size + len(extra)) / steps(size)))


def unlabelled_inputs(unlabelled: torch.Tensor | InMemoryLoader | None) -> torch.Tensor | None:
    """The inputs of ``unlabelled`` (a tensor, or an :class:`InMemoryLoader` whose labels are ignored), or ``None``."""
    if unlabelled is None or isinstance(unlabelled, torch.Tensor):
        return unlabelled
    if isinstance(unlabelled, InMemoryLoader):
        return unlabelled.inputs
    raise ConfigError(f"unlabelled must be a tensor of inputs or an InMemoryLoader, got {type(unlabelled).__name__}")


def _check(labelled: Any, settings: list[KDSetting], extra: torch.Tensor | None) -> None:
    if not isinstance(labelled, InMemoryLoader) or labelled.targets is None:
        raise ConfigError("distill() takes the labelled data as a labelled InMemoryLoader (the teacher's logits and the "
                          "validation split are drawn from its tensors); use DistillTrainer for other loaders")
    if not settings:
        raise ConfigError("distill() needs at least one setting")
    if labelled.targets.is_floating_point() or labelled.targets.dim() != 1:
        raise ConfigError(f"distill() takes class labels (integers), got {labelled.targets.dtype} targets of shape "
                          f"{tuple(labelled.targets.shape)}: pass labels.long() for classes (soft targets of a "
                          "teacher are what distill makes itself; for them use warmstart.distill.SoftLabelTrainer)")
    if extra is not None and tuple(extra.shape[1:]) != tuple(labelled.inputs.shape[1:]):
        raise ConfigError(f"the unlabelled inputs have shape {tuple(extra.shape[1:])} per sample and the labelled ones "
                          f"{tuple(labelled.inputs.shape[1:])}: the teacher labels both with one network, so pass "
                          "unlabelled images of the labelled ones' shape")
    for setting in settings:
        if (setting.unlabelled or setting.same_steps) and extra is None:
            raise ConfigError(f"setting '{setting.name}' {'counts its steps by' if setting.same_steps else 'learns from'} "
                              "unlabelled data, but none was given (unlabelled=)")
        if setting.unlabelled and setting.alpha != 1:
            raise ConfigError(f"setting '{setting.name}': unlabelled data has no hard labels, so alpha must be 1")
