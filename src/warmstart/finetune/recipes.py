"""One-call fine-tuning that chooses how to fine-tune by validation, not by a fixed default."""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import nn

from warmstart import distributed
from warmstart.config import OptimizerConfig
from warmstart.data.loaders import split_loader
from warmstart.errors import ConfigError, DataError
from warmstart.finetune.methods import Full, LinearProbe, LoRA, Method, Partial, build_method
from warmstart.finetune.trainer import FinetuneTrainer
from warmstart.heads import find_head, swap_head
from warmstart.selection import Selection, select


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One way to fine-tune, as :func:`fine_tune` tries it.

    Attributes:
        name: its name in results and reports.
        warm_up: epochs of a linear probe (the head alone) before the main phase.
        method: the main phase's fine-tuning method (which groups train, at which rates).
        pretrained: start from the model's weights; ``False`` re-initialises every layer (the
            control that says whether the pretrained weights help at all).
    """

    name: str
    warm_up: int
    method: Method
    pretrained: bool = True


def default_candidates(layer_decay: float | None = 0.9) -> list[Candidate]:
    """The candidates :func:`fine_tune` compares: freeze depth, backbone rate, warm-up, and no pretraining.

    - ``recipe``: 2 epochs of linear probe, then every layer with layer-wise decay (timm/fastai style);
    - ``full``: every layer at the head's rate from the start (right when the features must change);
    - ``freeze_first``: as ``recipe`` with the first layer group frozen (keeps low-level features);
    - ``linear_probe``: only the head trains, on cached features (cheap);
    - ``no_pretraining``: ``full`` from random weights: the control.
    """
    return [Candidate("recipe", 2, Full(layer_decay=layer_decay)),
            Candidate("full", 0, Full(backbone_lr_mult=1.0)),
            Candidate("freeze_first", 2, Partial(k=1, layer_decay=layer_decay)),
            Candidate("linear_probe", 0, LinearProbe()),
            Candidate("no_pretraining", 0, Full(backbone_lr_mult=1.0), pretrained=False)]


@dataclasses.dataclass
class FineTuneResult:
    """The outcome of :func:`fine_tune`.

    Attributes:
        model: the fine-tuned model (the same object that was passed in).
        history: per-epoch metrics of the final training; each entry has a ``phase`` key.
        trainer: the trainer of the last phase (for ``evaluate`` and checkpoints).
        choice: the candidate that was trained on all labels (``"recipe"`` without selection).
        scores: mean validation accuracy of each candidate (empty without selection).
        selection: the choice in full: each candidate's mean and standard error over the folds,
            how it was validated, the trainings it took and their cost (``None`` without selection).
    """

    model: nn.Module
    history: list[dict[str, Any]]
    trainer: FinetuneTrainer
    choice: str = "recipe"
    scores: dict[str, float] = dataclasses.field(default_factory=dict)
    selection: Selection | None = None


def fine_tune(model: nn.Module, train_loader: Iterable[Any], val_loader: Iterable[Any] | None = None,
              num_classes: int | None = None, epochs: int = 10, *, select: bool = True,
              candidates: list[Candidate] | None = None, val_fraction: float = 0.2, folds: int = 3,
              optimizer: OptimizerConfig | Mapping[str, Any] | None = None, lr: float | None = None,
              weight_decay: float | None = None, scheduler: Any = None, freeze_epochs: int = 2,
              layer_decay: float | None = 0.9, backbone_lr_mult: float = 1.0, label_smoothing: float = 0.1,
              proximal: float | None = None, lora: Mapping[str, Any] | None = None, head: str | None = None,
              keep_head: bool = False, head_init: str = "normal",
              out_dir: str | os.PathLike | None = None, **trainer_kwargs: Any) -> FineTuneResult:
    """Fine-tune a pretrained classifier in one call, choosing how by validation accuracy.

    With ``select=True`` (the default) each candidate of :func:`default_candidates` (freeze depth,
    backbone learning rate, linear-probe warm-up, and training from random weights as the control)
    trains a copy of the model and is scored by :func:`warmstart.selection.select`: on
    ``val_loader`` when given; else, under 2,000 labelled samples, by stratified ``folds``-fold
    cross-validation over the labels (one small hold-out would choose noise); else on a stratified
    ``val_fraction`` held out. The first candidate (``recipe``) is kept unless another beats it by
    more than the standard error of the difference; the choice then trains ``epochs`` epochs on
    all the labels. Cost: each trial trains ``max(1, round(2 * epochs / (trials * share)))``
    epochs (``trials`` = candidates x folds, ``share`` = the part of the labels a trial trains
    on), so all the trials cost about 2 runs and the whole call about 3x one fine-tune (more when
    ``epochs`` is too small to divide: ``result.selection.cost`` says what it was).
    ``result.choice``, ``result.scores`` (means) and ``result.selection`` (each candidate's mean
    and standard error, how it was validated, the trainings and their cost) say what was chosen
    and why; a win of ``no_pretraining`` is stated in a warning, since the pretrained weights then
    did not help.

    With ``select=False``, the fastai-style recipe runs once: ``freeze_epochs`` epochs of linear
    probe, then every layer with the head at ``lr`` and backbone group ``i`` of ``G`` at
    ``lr * layer_decay ** (G - i)`` (or ``lr * backbone_lr_mult`` when ``layer_decay`` is None).

    With ``lora={"r": 8, "alpha": 16, "targets": "auto", "dropout": 0.05}`` (or ``{}`` for these
    defaults) the model is fine-tuned with LoRA adapters instead, in one phase of ``epochs``: the
    adapters and the new head train, the backbone stays frozen (``result.choice == "lora"``; no
    selection). A single candidate in ``candidates`` is likewise trained without scoring.

    Every run uses the same optimizer (AdamW, lr 3e-3, weight decay 0.01 unless ``optimizer`` says
    otherwise; no decay on biases and norms), a cosine schedule (a 5% warmup in the main phase
    unless ``scheduler`` is given) and cross-entropy with ``label_smoothing``. A new task gets a
    new head (``num_classes``), even when the class count matches; ``keep_head=True`` keeps it.

    Args:
        model: the pretrained classifier (changed in place).
        train_loader: training batches ``(inputs, target)``.
        val_loader: evaluated after every epoch; with ``select`` the candidates are scored on it.
        num_classes: classes of the new task (``None``: same task, keep the head).
        epochs: epochs of the final training.
        select: choose among ``candidates`` by validation accuracy.
        candidates: the ways to try (default :func:`default_candidates`).
        val_fraction: share of the labels held out for the choice when there is no ``val_loader`` and
            2,000 labels or more.
        folds: folds of the cross-validation on fewer labels.
        optimizer: an :class:`OptimizerConfig` or dict (``name``, ``lr`` of the head, ...).
        lr: shorthand for the optimizer's ``lr`` (not together with ``optimizer``).
        weight_decay: shorthand for the optimizer's ``weight_decay`` (not together with ``optimizer``).
        scheduler: the schedule of the main phase (a :class:`SchedulerConfig` or dict).
        freeze_epochs: epochs of the linear-probe warm-up without selection (0 skips it).
        layer_decay: learning-rate decay per layer group from the head down.
        backbone_lr_mult: backbone learning-rate multiplier when ``layer_decay`` is None.
        label_smoothing: label smoothing of the cross-entropy.
        proximal: ``lam`` of a proximal term toward the pretrained weights in the main phase
            (under LoRA, toward the adapters' starting values).
        lora: LoRA options: fine-tune with adapters (see :class:`warmstart.finetune.LoRA`).
        head: module path of the head (found automatically when omitted).
        keep_head: keep the model's head even though ``num_classes`` is given.
        head_init: the new head's initialisation (see :func:`warmstart.heads.init_head`): the small
            ``"normal"`` N(0, 0.01^2) for pretrained features; ``"default"`` (the layer's own
            ``reset_parameters``) for a model trained from random weights, such as a
            no-pretraining control, which the small init handicaps. The ``no_pretraining``
            candidate re-initialises every layer, its head included, with ``reset_parameters``.
        out_dir: folder for the final training's checkpoints and logs (``probe/`` and ``full/``).
        **trainer_kwargs: more :class:`warmstart.Trainer` options (``precision``, ``device``, ``config``, ...).

    Returns:
        A :class:`FineTuneResult`.

    Raises:
        ConfigError: ``optimizer`` together with ``lr``/``weight_decay``, ``keep_head`` with a head
            of another class count, or no candidates.
        DataError: ``select`` without a ``val_loader`` on a loader that cannot be split, or with too
            few labelled samples to hold a validation split out.

    Example:
        >>> from warmstart.models import small_cnn
        >>> data = [(torch.randn(8, 1, 28, 28), torch.randint(0, 3, (8,)))] * 2
        >>> result = fine_tune(small_cnn(width=4), data, num_classes=3, epochs=1, select=False, freeze_epochs=1,
        ...                    progress=False)
        >>> [h["phase"] for h in result.history]
        ['linear_probe', 'full']
    """
    optimizer = _recipe_optimizer(optimizer, lr, weight_decay)
    _prepare_head(model, num_classes, head, keep_head, head_init)
    run = functools.partial(_train, optimizer=optimizer, scheduler=scheduler, label_smoothing=label_smoothing,
                            proximal=proximal, head=head, trainer_kwargs=trainer_kwargs)
    fixed = Candidate("recipe", freeze_epochs, Full(backbone_lr_mult=backbone_lr_mult, layer_decay=layer_decay))
    if lora is not None:
        candidates = [Candidate("lora", 0, build_method("lora", dict(lora)))]
    elif not select:
        history, trainer = run(model, fixed, train_loader, val_loader, epochs, out_dir)
        return FineTuneResult(model=model, history=history, trainer=trainer)
    choices = candidates if candidates is not None else default_candidates(layer_decay)
    if not choices:
        raise ConfigError("fine_tune(select=True) needs at least one candidate")
    if len(choices) == 1:  # nothing to choose between
        if not choices[0].pretrained:
            _reinitialise(model)
        history, trainer = run(model, choices[0], train_loader, val_loader, epochs, out_dir)
        return FineTuneResult(model=model, history=history, trainer=trainer, choice=choices[0].name)
    picked = _select(run, model, choices, train_loader, val_loader, val_fraction, epochs, folds)
    best = choices[_index(choices, picked.choice)]
    scores = {name: score.mean for name, score in picked.scores.items()}
    _announce(trainer_kwargs, f"fine_tune {picked.summary()}")
    if not best.pretrained:
        warnings.warn(f"fine_tune: training from random weights scored best on validation ({picked.summary()}); the "
                      "pretrained weights do not help this task", stacklevel=2)
        _reinitialise(model)
    history, trainer = run(model, best, train_loader, val_loader, epochs, out_dir)
    return FineTuneResult(model=model, history=history, trainer=trainer, choice=best.name, scores=scores,
                          selection=picked)


def _select(run: Any, model: nn.Module, choices: list[Candidate], train: Any, val: Any, fraction: float, epochs: int,
            folds: int) -> Selection:
    """Score the candidates (k-fold on small labelled data) and choose; refuse data too small to choose on.

    Raises:
        DataError: too few labelled samples to hold validation data out (the message says what to do).
    """
    if val is None:
        _check_enough(train, fraction, folds)
    def score(name: str, fit_on: Any, score_on: Any, trial_epochs: int) -> float:
        return _score(run, model, choices[_index(choices, name)], fit_on, score_on, trial_epochs)

    return select([c.name for c in choices], score, train, epochs, val_loader=val, val_fraction=fraction, folds=folds)


def _check_enough(loader: Any, fraction: float, folds: int) -> None:
    sizes = [_samples(part) for part in split_loader(loader, fraction, seed=0)]
    if 0 in sizes or sum(sizes) < 2 * folds:
        raise DataError(f"fine_tune chooses how to fine-tune by validation accuracy, but without a val_loader it "
                        f"cross-validates over {folds} folds (or, on large data, holds out val_fraction={fraction} of "
                        f"each class), and these {sum(sizes)} labelled samples are too few to choose on. Pass a "
                        "val_loader, label more samples, or fine_tune(..., select=False) to run the fixed recipe "
                        "without a choice.")


def _samples(loader: Any) -> int:
    size = getattr(loader, "dataset_size", None)
    return int(size) if size is not None else len(loader.dataset)


def _index(choices: list[Candidate], name: str) -> int:
    return next(i for i, c in enumerate(choices) if c.name == name)


def _score(run: Any, model: nn.Module, candidate: Candidate, train: Any, val: Any, epochs: int) -> float:
    """Validation accuracy of ``candidate`` trained on a copy of the model (the model itself is left as it is)."""
    trial = copy.deepcopy(model)
    if not candidate.pretrained:
        _reinitialise(trial)
    _, trainer = run(trial, candidate, train, None, epochs, None, quiet=True)
    return trainer.evaluate(val)["accuracy"]


def _train(model: nn.Module, candidate: Candidate, train: Any, val: Any, epochs: int, out_dir: Any, *,
           optimizer: Any, scheduler: Any, label_smoothing: float, proximal: float | None, head: str | None,
           trainer_kwargs: dict[str, Any], quiet: bool = False) -> tuple[list[dict[str, Any]], FinetuneTrainer]:
    """Train ``model`` the candidate's way: an optional linear-probe warm-up, then its main phase."""
    loss_fn = functools.partial(F.cross_entropy, label_smoothing=label_smoothing)
    options = {**trainer_kwargs, **({"progress": False} if quiet else {})}

    def folder(name: str) -> str | None:
        return None if out_dir is None else str(Path(out_dir) / name)

    history: list[dict[str, Any]] = []
    if candidate.warm_up:
        probe = FinetuneTrainer(model, optimizer, loss_fn, method=LinearProbe(), head=head,
                                max_epochs=candidate.warm_up, scheduler={"name": "cosine"}, out_dir=folder("probe"),
                                **options)
        _announce(options, f"fine_tune phase 1/2: linear probe, the head alone on cached features "
                           f"({candidate.warm_up} epochs)")
        history += [{"phase": "linear_probe", **h} for h in probe.fit(train, val)]
    anchored = proximal if candidate.pretrained and not isinstance(candidate.method, LinearProbe) else None
    trainer = FinetuneTrainer(model, optimizer, loss_fn, head=head, proximal=anchored, method=candidate.method,
                              max_epochs=epochs, scheduler=scheduler or {"name": "cosine", "warmup_epochs": 0.05 * epochs},
                              out_dir=folder("full"), **options)
    phase = f"{2 if candidate.warm_up else 1}/{2 if candidate.warm_up else 1}"
    _announce(options, f"fine_tune phase {phase}: {candidate.name} ({_describe(candidate.method)}, {epochs} epochs)")
    history += [{"phase": "full", **h} for h in trainer.fit(train, val)]
    return history, trainer


def _describe(method: Method) -> str:
    if isinstance(method, LinearProbe):
        return "the head alone"
    if isinstance(method, LoRA):
        return f"LoRA adapters r={method.r}, alpha={method.alpha} on a frozen backbone, and the head"
    frozen = f"first {method.k} layer group(s) frozen, " if isinstance(method, Partial) else ""
    rates = (f"layer-wise lr decay {method.layer_decay}" if method.layer_decay is not None
             else f"backbone lr x{method.backbone_lr_mult}")
    return frozen + rates


def _reinitialise(model: nn.Module) -> None:
    """Draw every layer's weights afresh (``reset_parameters``): the model forgets its pretraining."""
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()


def _announce(options: Mapping[str, Any], text: str) -> None:
    config = options.get("config")
    progress = options.get("progress", config.progress if config is not None else True)
    if progress and distributed.is_main_process():
        print(text, flush=True)


def _recipe_optimizer(optimizer: Any, lr: float | None, weight_decay: float | None) -> Any:
    if optimizer is not None and (lr is not None or weight_decay is not None):
        raise ConfigError("pass the learning rate and weight decay inside optimizer=..., or lr=/weight_decay= without "
                          "optimizer, not both")
    if optimizer is not None:
        return optimizer
    return {"name": "adamw", "lr": 3e-3 if lr is None else lr, "weight_decay": 0.01 if weight_decay is None else weight_decay}


def _prepare_head(model: nn.Module, num_classes: int | None, head: str | None, keep_head: bool, init: str) -> None:
    """A new head for a new task; keeping one is allowed only when it has the right size."""
    if num_classes is None:
        return
    if not keep_head:
        swap_head(model, num_classes, head=head, init=init)
    elif find_head(model, head).num_classes != num_classes:
        raise ConfigError(f"keep_head=True, but the head has {find_head(model, head).num_classes} outputs and the task "
                          f"{num_classes} classes; drop keep_head to give the model a new head")

