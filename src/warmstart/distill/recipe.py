"""One-call distillation that uses what helps: the teacher labels unlabelled data, and KD is chosen by validation."""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from warmstart import distributed
from warmstart.data.augment import is_random
from warmstart.data.loaders import InMemoryLoader
from warmstart.distill.cache import is_deterministic
from warmstart.distill.trainer import DistillTrainer
from warmstart.errors import ConfigError
from warmstart.selection import Selection
from warmstart.selection import select as select_by_validation
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
            epochs: int = 30, optimizer: Any = None, scheduler: Any = None,
            settings: Sequence[KDSetting] | None = None, select: bool = True, val_fraction: float = 0.2, folds: int = 3,
            out_dir: str | os.PathLike | None = None, **trainer_kwargs: Any) -> DistillResult:
    """Train ``student`` from ``teacher`` the way that validates best; hard labels unless beaten beyond noise.

    Each setting of :func:`default_settings` trains a copy of the student and is scored by
    :func:`warmstart.selection.select`: on ``val_loader`` when given; else, under 2,000 labels, by
    stratified ``folds``-fold cross-validation over the labels (a 20% hold-out of 100 labels is 20
    images: its choice is noise); else on a stratified ``val_fraction`` held out. Hard labels, the
    first setting, are kept unless another beats them by more than the standard error of the
    difference, and the choice trains ``epochs`` epochs on everything. With ``unlabelled``
    images the teacher labels them together with the labelled ones (its logits cached once when
    the data is not randomly augmented: a deterministic ``transform`` of ``labelled``, such as a
    normalisation, is cached through it; a random one gets the teacher's logits of each epoch's
    inputs): the setting that helps most in our measurements (``bench/distill_mnist.py``). Those
    settings take more optimizer steps per epoch, so ``hard_labels_same_steps`` (hard labels for
    as many steps) is scored beside them: a distillation gain shows against it too.
    Cost: each trial trains ``max(1, round(2 * epochs / (trials * share)))`` epochs (``trials`` =
    settings x folds, ``share`` the part of the labels a trial trains on): on labels alone the
    trials cost about 2 final runs, the whole call about 3x one run. The settings that also learn
    from (or count steps by) ``unlabelled`` images cost ``(labelled + unlabelled) / labelled`` times
    as much per epoch; ``result.selection.cost`` gives the trials' cost in runs of the chosen
    setting (with 60 labels and 600 unlabelled images over 20 epochs: about 1 when an unlabelled
    setting wins, about 11 when hard labels do, whose final run is then 11x cheaper).

    Args:
        student: the network to train (changed in place).
        teacher: the trained network.
        labelled: labelled training batches (an :class:`InMemoryLoader`).
        unlabelled: more inputs without labels (a tensor or an unlabelled :class:`InMemoryLoader`).
        val_loader: labelled validation batches; without one, part of ``labelled`` is held out.
        epochs: epochs of the final training.
        optimizer: as for :class:`warmstart.Trainer` (AdamW, lr 3e-3 when ``None``).
        scheduler: as for :class:`warmstart.Trainer` (cosine when ``None``).
        settings: the settings to try (default :func:`default_settings`).
        select: choose by validation; ``False`` trains the first setting.
        val_fraction: share of the labels held out for the choice when there is no ``val_loader``
            and 2,000 labels or more.
        folds: folds of the cross-validation on fewer labels.
        out_dir: folder of the final training's checkpoints and logs.
        **trainer_kwargs: more :class:`warmstart.Trainer` options.

    Returns:
        A :class:`DistillResult`.

    Raises:
        ConfigError: no settings, an unlabelled setting without unlabelled data, or loaders of
            another kind than :class:`InMemoryLoader` / tensors.

    Example:
        >>> from warmstart.models import mlp
        >>> x, y = torch.randn(40, 8), torch.randint(0, 3, (40,))
        >>> result = distill(mlp(8, [4], 3), mlp(8, [16], 3), InMemoryLoader(x, y, batch_size=8), epochs=2,
        ...                  unlabelled=torch.randn(40, 8), progress=False)
        >>> result.choice in result.scores
        True
    """
    extra = unlabelled_inputs(unlabelled)
    tried = list(settings) if settings is not None else default_settings(extra is not None)
    _check(labelled, tried, extra)
    options = {"optimizer": optimizer or {"name": "adamw", "lr": 3e-3},
               "scheduler": scheduler or {"name": "cosine"}, **trainer_kwargs}
    with tempfile.TemporaryDirectory(prefix="warmstart-distill-") as caches:
        picked = None
        if select and len(tried) > 1:
            picked = choose_setting(student, teacher, tried, labelled, extra, val_loader, val_fraction, folds, epochs,
                                    Path(caches), {**options, "progress": False})
        best = next(s for s in tried if s.name == picked.choice) if picked is not None else tried[0]
        if picked is not None and _progress(options):
            print(f"distill {picked.summary()}", flush=True)
        trainer = train_setting(student, teacher, best, labelled, extra, epochs,
                                Path(caches) / f"all-{best.unlabelled}.npy", val_loader,
                                {**options, "out_dir": None if out_dir is None else str(out_dir)})
    scores = {} if picked is None else {name: score.mean for name, score in picked.scores.items()}
    return DistillResult(model=student, history=trainer.history, trainer=trainer, choice=best.name, scores=scores,
                         selection=picked)


def choose_setting(student: nn.Module, teacher: nn.Module, tried: Sequence[KDSetting], labelled: Any,
                   extra: torch.Tensor | None, val: Any, fraction: float, folds: int, epochs: int, caches: Path,
                   options: dict[str, Any]) -> Selection:
    """Score every setting on a copy of the student (k-fold on small labelled data) and choose; the first is the default.

    Shared by :func:`distill` and :func:`warmstart.compress.recover`: ``labelled`` is an
    :class:`InMemoryLoader` or a ``DataLoader`` over a map-style data set (as
    :func:`warmstart.selection.select` splits it), ``caches`` a folder for the teacher's logits.
    """
    splits: dict[int, int] = {}  # one teacher cache per training split, shared by the settings that train on it

    def score(name: str, fit_on: Any, score_on: Any, trial: int) -> float:
        setting = next(s for s in tried if s.name == name)
        cache = caches / f"split{splits.setdefault(id(fit_on), len(splits))}-{setting.unlabelled}.npy"
        trainer = train_setting(copy.deepcopy(student), teacher, setting, fit_on, extra, trial, cache, None, options)
        return trainer.evaluate(score_on)["accuracy"]

    size = _samples(labelled)
    more = 1.0 if extra is None else (size + len(extra)) / size
    return select_by_validation([s.name for s in tried], score, labelled, epochs, val_loader=val,
                                val_fraction=fraction, folds=folds,
                                cost_of={s.name: more if s.unlabelled or s.same_steps else 1.0 for s in tried})


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
        offline = (isinstance(train, InMemoryLoader) and cache is not None and not is_random(train.transform)
                   and is_deterministic(train.transform, train.inputs[:train.batch_size])
                   and not distributed.is_distributed())
    trainer = DistillTrainer(student, teacher, temperature=setting.temperature, alpha=setting.alpha,
                             cache_teacher=offline, cache_path=str(cache) if offline and cache is not None else None,
                             max_epochs=epochs, **options)
    trainer.fit(train, val, resume=resume)
    return trainer


def _same_steps(labelled: Any, extra: torch.Tensor, epochs: int) -> int:
    """Epochs on ``labelled`` that take as many optimizer steps as ``epochs`` on ``labelled`` and ``extra`` together."""
    def steps(n: int) -> int:
        return max(1, n // labelled.batch_size if labelled.drop_last else math.ceil(n / labelled.batch_size))

    size = _samples(labelled)
    return max(1, round(epochs * steps(size + len(extra)) / steps(size)))


def _samples(loader: Any) -> int:
    """Labelled samples in an :class:`InMemoryLoader` or a ``DataLoader`` over a sized data set."""
    return len(loader.targets) if isinstance(loader, InMemoryLoader) else len(loader.dataset)


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
    for setting in settings:
        if (setting.unlabelled or setting.same_steps) and extra is None:
            raise ConfigError(f"setting '{setting.name}' {'counts its steps by' if setting.same_steps else 'learns from'} "
                              "unlabelled data, but none was given (unlabelled=)")
        if setting.unlabelled and setting.alpha != 1:
            raise ConfigError(f"setting '{setting.name}': unlabelled data has no hard labels, so alpha must be 1")


def _progress(options: dict[str, Any]) -> bool:
    config = options.get("config")
    return bool(options.get("progress", config.progress if config is not None else True)) and \
        distributed.is_main_process()
