"""Scoring every candidate on the same splits and choosing: the :class:`Selection` record and :func:`select`."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from warmstart.errors import ConfigError, DataError
from warmstart.selection._folds import Split, cross_validation_splits, given_split, held_out_split, sample_count
from warmstart.selection._statistics import (ALPHA, CandidateScore, best_of, choose, detectable_gain, summarise,
                                             z_quantile)

CV_BELOW = 2000  # labelled samples under which one held-out split is too small to choose on: cross-validate
BUDGET = 2.0  # the trials of a choice together cost about this many runs of the final training
TELLS_APART = 0.10  # a choice that cannot tell a gain of 10 points from noise says so (and runs no trial)
MIN_TRIAL_STEPS = 50  # a trial trains at least this many optimizer steps: fewer score every candidate near its floor

# score(name, train_loader, val_loader, trial_epochs, split_index) -> validation accuracy of a fresh trial
Score = Callable[[str, Any, Any, int, int], float]


@dataclasses.dataclass
class Selection:
    """What a choice by validation found, what it could tell, and what it cost.

    Attributes:
        choice: the chosen candidate.
        default: the candidate kept unless another beats it beyond chance (:func:`choose`).
        scores: each candidate's :class:`CandidateScore`, in the order tried.
        validation: how the candidates were scored (``"5-fold x 1 cross-validation on 100 labels"``, ...).
        trainings: number of trial trainings (candidates x splits).
        trial_epochs: epochs of each trial.
        cost: the trials' training cost in runs of the final training (epochs x share of the data
            each trial trained on x the candidate's cost per epoch, summed, over the final run's);
            the final run adds 1.
        trial_steps: optimizer steps of a trial on the first split (``None`` when the loader has
            no length).
        alpha: the chance of choosing another candidate when all are equally good.
        detectable: the smallest gain over the default, in accuracy, that these validation samples
            let the choice accept.
        informative: False when the comparison could not have told the candidates apart (every
            candidate at the constant-prediction rate, or no gain under 10 points detectable) and
            the default was kept for want of evidence; ``note`` says why.
        note: what limited the choice, in a sentence (empty when nothing did).
        repeats: repeats of the cross-validation among the splits.
        share: the part of the labels each trial trained on.
    """

    choice: str
    default: str
    scores: dict[str, CandidateScore]
    validation: str
    trainings: int
    trial_epochs: int
    cost: float
    trial_steps: int | None = None
    alpha: float = ALPHA
    detectable: float = 0.0
    informative: bool = True
    note: str = ""
    repeats: int = 1
    share: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record (``Selection.from_dict`` reads it back)."""
        scores = {n: {**dataclasses.asdict(s), "folds": list(s.folds), "counts": list(s.counts)}
                  for n, s in self.scores.items()}
        return {**dataclasses.asdict(self), "scores": scores}

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> Selection:
        """The :class:`Selection` that :meth:`to_dict` recorded."""
        scores = {n: CandidateScore(s["mean"], s["se"], tuple(s["folds"]), tuple(s.get("counts", ())))
                  for n, s in record["scores"].items()}
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{**{k: v for k, v in record.items() if k in known}, "scores": scores})

    def summary(self) -> str:
        """One line: the choice, every candidate's mean +- SE, what the choice could tell, and the cost."""
        return (f"chose '{self.choice}' by {self.validation} (default '{self.default}', kept unless beaten beyond "
                f"chance, {self.alpha:.0%} of draws when all are equal): " + ", ".join(f"{n} {s}" for n, s in self.scores.items())
                + f"; gains above {100 * self.detectable:.1f} points detectable; {self.trainings} trial trainings of "
                f"{self.trial_epochs} epoch(s)" + (f" ({self.trial_steps} optimizer steps)" if self.trial_steps is not None else "")
                + f", about {self.cost:.1f}x the final run" + (f". {self.note}" if self.note else ""))


def trial_epochs(epochs: int, trainings: int, share: float, budget: float = BUDGET) -> int:
    """Epochs per trial so that ``trainings`` trials on ``share`` of the data cost about ``budget`` final runs (at least 1).

    ``max(1, round(budget * epochs / (trainings * share)))``.
    """
    return max(1, round(budget * epochs / (trainings * share)))


def plan_splits(loader: Any, val_loader: Any, *, val_fraction: float, folds: int, repeats: int, cv_below: int,
                seed: int) -> tuple[list[Split], float, str]:
    """The splits to score on, the share of the labels each trial trains on, and how they were made.

    On ``val_loader`` when given; else, under ``cv_below`` labelled samples, ``folds`` x ``repeats``
    stratified cross-validation; else one stratified ``val_fraction`` held out.
    """
    _check_counts(folds, repeats)
    if val_loader is not None:
        return [given_split(loader, val_loader)], 1.0, "the validation loader"
    size = sample_count(loader)
    if size < 2 * folds:
        raise DataError(f"choosing by validation cross-validates over {folds} folds, and {size} labelled samples are "
                        f"too few to choose on (at least {2 * folds}): pass a val_loader, label more samples, or pass "
                        "select=False to train without a choice")
    if size < cv_below:
        splits = cross_validation_splits(loader, folds, repeats, seed)
        return splits, (folds - 1) / folds, f"{folds}-fold x {repeats} cross-validation on {size} labels"
    split, share = held_out_split(loader, val_fraction, seed)
    return [split], share, f"a held-out {val_fraction:.0%} of {size} labels"


def select(names: Sequence[str], score: Score, loader: Any, epochs: int, *, val_loader: Any = None,
           val_fraction: float = 0.2, folds: int = 5, repeats: int = 1, cv_below: int = CV_BELOW, seed: int = 0,
           budget: float = BUDGET, cost_of: Mapping[str, float] | None = None, alpha: float = ALPHA,
           done: Mapping[tuple[str, int], float] | None = None,
           on_trial: Callable[[str, int, float], None] | None = None, max_detectable: float | None = TELLS_APART,
           min_trial_steps: int = MIN_TRIAL_STEPS) -> Selection:
    """Score every candidate on the same splits and choose with :func:`choose`, ``names[0]`` being the default.

    The splits come from :func:`plan_splits`. Each trial trains :func:`trial_epochs` epochs so that
    all the trials together cost about ``budget`` runs of ``epochs`` on all the data (with the
    defaults, 5 folds, 1 repeat and budget 2, the choice and the final run cost about 3x one run),
    but at least ``min_trial_steps`` optimizer steps: shorter trials score every candidate near
    its floor (EfficientNet-Lite0 trials of 4 steps all scored alike), and then ``cost`` says
    how much more they took.

    Before any trial, the validation count alone bounds what the choice can detect: with ``N``
    validation labels no gain below ``z(1 - alpha/m) * sqrt(0.5 / N)`` passes (at best, at 50%
    accuracy). When that exceeds ``max_detectable`` (10 points: under about 200 labels with 5
    candidates) no trial runs, and the default is chosen with a ``note`` saying why: the trials
    would cost several runs and could not change the choice.

    Args:
        names: the candidates; the first is the default (the plain way).
        score: ``score(name, train_loader, val_loader, trial_epochs, split)`` trains a fresh copy
            the candidate's way and returns its accuracy on ``val_loader``.
        loader: the labelled training data.
        epochs: epochs of the final run (the trials' epochs are set from it).
        val_loader: labelled validation data to score on instead of splitting ``loader``.
        val_fraction: share of each class held out when the data is too large to cross-validate.
        folds: folds of the cross-validation.
        repeats: repeats of the cross-validation, each with other folds.
        cv_below: cross-validate below this many labelled samples.
        seed: seed of the folds and the held-out split.
        budget: the trials' cost in final runs.
        cost_of: a candidate's cost per epoch relative to the others (default 1 each), for the
            reported cost, in runs of the chosen candidate.
        alpha: the family-wise chance of a wrong choice (:func:`choose`).
        done: scores of trials already run, by ``(name, split)`` (a resumed choice): not run again.
        on_trial: called with ``(name, split, accuracy)`` after each trial that ran (to record it).
        max_detectable: run no trial when the validation count cannot detect a smaller gain than
            this (``None``: always run them).
        min_trial_steps: optimizer steps a trial trains at least.

    Returns:
        A :class:`Selection`.

    Raises:
        DataError: the labels cannot be split (no ``val_loader`` and a loader that cannot be
            indexed), are not classes, or are too few to hold one out.

    Examples:
        >>> import torch
        >>> from warmstart.data import InMemoryLoader
        >>> data = InMemoryLoader(torch.randn(30, 2), torch.arange(30) % 3, batch_size=8)
        >>> picked = select(["plain", "other"], lambda n, tr, va, e, s: 0.5, data, epochs=4)
        >>> picked.choice, picked.validation
        ('plain', '5-fold x 1 cross-validation on 30 labels')
    """
    splits, share, validation = plan_splits(loader, val_loader, val_fraction=val_fraction, folds=folds,
                                            repeats=repeats, cv_below=cv_below, seed=seed)
    reps = repeats if len(splits) > 1 else 1
    distinct = sum(split.count for split in splits) / reps
    best_case = z_quantile(1 - alpha / max(len(names) - 1, 1)) * math.sqrt(0.5 / distinct)
    if max_detectable is not None and best_case > max_detectable:
        return Selection(choice=names[0], default=names[0], scores={}, validation=validation, trainings=0,
                         trial_epochs=0, cost=0.0, alpha=alpha, detectable=best_case, informative=False, repeats=reps,
                         share=share, note=(f"With {distinct:.0f} validation labels no gain under "
                                            f"{100 * best_case:.0f} points could be told from noise, so no trial ran "
                                            f"and the default '{names[0]}' was trained; label more samples or pass "
                                            "a larger val_loader for a choice"))
    batches = len(splits[0].train) if hasattr(splits[0].train, "__len__") else None
    each = trial_epochs(epochs, len(names) * len(splits), share, budget)
    if batches:
        each = max(each, math.ceil(min_trial_steps / batches))
    done = done or {}
    results = {}
    for name in names:
        accuracies = []
        for index, split in enumerate(splits):
            accuracy = done.get((name, index))
            if accuracy is None:
                accuracy = float(score(name, split.train, split.val, each, index))
                if on_trial is not None:
                    on_trial(name, index, accuracy)
            accuracies.append(accuracy)
        results[name] = summarise(accuracies, [s.count for s in splits], reps, share)
    choice = choose(results, names[0], alpha=alpha, repeats=reps, share=share)
    weight = cost_of or {}
    cost = sum(weight.get(n, 1.0) for n in names) * len(splits) * each * share / (weight.get(choice, 1.0) * epochs)
    picked = Selection(choice=choice, default=names[0], scores=results, validation=validation,
                       trainings=len(names) * len(splits), trial_epochs=each, cost=cost,
                       trial_steps=None if batches is None else batches * each, alpha=alpha,
                       detectable=detectable_gain(results[names[0]], len(names) - 1, alpha, reps),
                       repeats=reps, share=share)
    picked.informative, picked.note = _informative(picked, splits)
    return picked


def validation_accuracy(metrics: Mapping[str, float], caller: str) -> float:
    """The ``accuracy`` of a trial's validation metrics.

    Raises:
        DataError: metrics without accuracy: the outputs are not ``(N, C)`` class scores or the
            targets not class labels, and a choice by accuracy means nothing.
    """
    if "accuracy" not in metrics:
        raise DataError(f"{caller} chooses by validation accuracy, but the validation metrics hold none "
                        f"({', '.join(sorted(metrics))}): the model's outputs are not (N, C) class scores or the "
                        "targets not class labels (regression?). Pass select=False to train without a choice")
    return float(metrics["accuracy"])


def _informative(picked: Selection, splits: list[Split]) -> tuple[bool, str]:
    """Whether the comparison could tell the candidates apart, and if not, why (only when the default was kept)."""
    if picked.choice != picked.default:
        return True, ""
    steps = f"{picked.trial_steps} optimizer steps" if picked.trial_steps is not None else f"{picked.trial_epochs} epoch(s)"
    labels = [s.labels for s in splits]
    if all(label is not None and len(label) for label in labels):
        import torch

        every = torch.cat(labels)  # type: ignore[arg-type]
        floor = float(every.bincount().max()) / len(every)  # predicting the most frequent class
        samples = len(every) / picked.repeats
        best = picked.scores[best_of(picked.scores)].mean
        if best <= floor + z_quantile(0.975) * math.sqrt(floor * (1 - floor) / samples):
            return False, (f"No candidate scored above the {100 * floor:.0f}% of predicting the most frequent class: "
                           f"the trials ({steps} each) learned nothing to choose on, so the default was kept; train "
                           "longer (more epochs), label more samples, or pass a val_loader")
    if picked.detectable > TELLS_APART:
        return False, (f"With these validation samples only gains above {100 * picked.detectable:.0f} points could be "
                       f"told from noise (trials of {steps}), so the default was kept for want of evidence; label "
                       "more samples or pass a larger val_loader to tell smaller gains apart")
    return True, ""


def _check_counts(folds: Any, repeats: Any) -> None:
    for name, value in (("folds", folds), ("repeats", repeats)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be a whole number, got {value!r}: pass e.g. {name}=3")
    if folds < 2:
        raise ConfigError(f"folds must be >= 2 (each fold is scored by a model trained on the others), got {folds}")
    if repeats < 1:
        raise ConfigError(f"repeats must be >= 1, got {repeats}")
