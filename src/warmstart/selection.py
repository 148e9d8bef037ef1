"""Choosing among ways to train by validation without choosing noise: k-fold scores, their spread, and a default kept unless beaten."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, RandomSampler, Subset

from warmstart.data.bundled import labels_of
from warmstart.data.loaders import InMemoryLoader, held_out_rows, rebuild_loader
from warmstart.errors import DataError

CV_BELOW = 2000  # labelled samples under which one held-out split is too small to choose on: cross-validate
BUDGET = 2.0  # the trials of a choice together cost about this many runs of the final training


@dataclasses.dataclass(frozen=True)
class CandidateScore:
    """One candidate's validation accuracy over the folds.

    Attributes:
        mean: mean accuracy over the folds.
        se: its standard error: ``stdev(folds) / sqrt(len(folds))`` (sample stdev, ``n - 1``) over
            two or more folds; on one held-out set of ``n`` samples ``sqrt(mean * (1 - mean) / n)``.
        folds: the accuracy on each fold (repeats one after another).
    """

    mean: float
    se: float
    folds: tuple[float, ...]

    def __str__(self) -> str:
        return f"{100 * self.mean:.1f} +- {100 * self.se:.1f}%"


@dataclasses.dataclass
class Selection:
    """What a choice by validation found and what it cost.

    Attributes:
        choice: the chosen candidate.
        default: the candidate kept unless another beats it by more than the standard error.
        scores: each candidate's :class:`CandidateScore`, in the order tried.
        validation: how the candidates were scored (``"3-fold x 1 cross-validation on 100 labels"``, ...).
        trainings: number of trial trainings (candidates x folds x repeats).
        trial_epochs: epochs of each trial.
        cost: the trials' training cost in runs of the final training (epochs x share of the data
            each trial trained on x the candidate's cost per epoch, summed, over the final run's);
            the final run adds 1.
        trial_steps: optimizer steps of a trial on the first split (batches per epoch x
            ``trial_epochs``; ``None`` when the loader has no length). Trials of a few dozen steps
            score every candidate near chance on small data, and then the default is kept for
            want of evidence, not because it won (``bench/transfer_suite.py``: 12-step trials).
    """

    choice: str
    default: str
    scores: dict[str, CandidateScore]
    validation: str
    trainings: int
    trial_epochs: int
    cost: float
    trial_steps: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record (``Selection.from_dict`` reads it back)."""
        scores = {n: {"mean": s.mean, "se": s.se, "folds": list(s.folds)} for n, s in self.scores.items()}
        return {**dataclasses.asdict(self), "scores": scores}

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> Selection:
        """The :class:`Selection` that :meth:`to_dict` recorded."""
        scores = {n: CandidateScore(s["mean"], s["se"], tuple(s["folds"])) for n, s in record["scores"].items()}
        return cls(**{**record, "scores": scores})

    def summary(self) -> str:
        """One line: the choice, every candidate's mean +- SE, and the cost."""
        return (f"chose '{self.choice}' by {self.validation} (default '{self.default}', kept unless beaten by more than "
                f"the standard error): " + ", ".join(f"{n} {s}" for n, s in self.scores.items())
                + f"; {self.trainings} trial trainings of {self.trial_epochs} epoch(s)"
                + (f" ({self.trial_steps} optimizer steps)" if self.trial_steps is not None else "")
                + f", about {self.cost:.1f}x the final run")


def stratified_folds(labels: torch.Tensor, folds: int, seed: int = 0) -> list[torch.Tensor]:
    """The validation rows of each of ``folds`` stratified folds (sorted; together every row once).

    Each class's rows are shuffled with ``seed`` and dealt out in turn, continuing where the last
    class stopped, so each fold holds ``floor`` or ``ceil`` of ``n_c / folds`` of every class ``c``
    and the fold sizes differ by at most one.

    Raises:
        DataError: ``folds < 2``, or fewer labelled rows than folds.

    Example:
        >>> labels = torch.tensor([0, 0, 0, 1, 1, 1])
        >>> [labels[rows].tolist() for rows in stratified_folds(labels, 2)]  # each fold: 1 or 2 of each class
        [[0, 0, 1], [0, 1, 1]]
    """
    if folds < 2 or len(labels) < folds:
        raise DataError(f"{folds}-fold cross-validation needs folds >= 2 and at least {folds} labelled rows, "
                        f"got {len(labels)}")
    g = torch.Generator().manual_seed(seed)
    dealt: list[list[int]] = [[] for _ in range(folds)]
    turn = 0
    for label in labels.unique().tolist():
        rows = torch.nonzero(labels == label).flatten()
        for row in rows[torch.randperm(len(rows), generator=g)].tolist():
            dealt[turn % folds].append(row)
            turn += 1
    return [torch.tensor(sorted(rows), dtype=torch.long) for rows in dealt]


def standard_error(values: Sequence[float]) -> float:
    """``stdev(values) / sqrt(n)`` with the sample stdev (``n - 1``); 0 for fewer than two values."""
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))


def summarise(folds: Sequence[float], val_size: int) -> CandidateScore:
    """A :class:`CandidateScore` of per-fold accuracies; one fold of ``val_size`` samples gets the binomial SE."""
    mean = sum(folds) / len(folds)
    se = standard_error(folds) if len(folds) > 1 else math.sqrt(max(mean * (1 - mean), 0.0) / max(val_size, 1))
    return CandidateScore(mean=mean, se=se, folds=tuple(folds))


def choose(scores: Mapping[str, CandidateScore], default: str) -> str:
    """The best mean, unless it beats ``default`` by no more than the standard error of the difference.

    The best is the highest mean (the first tried on a tie). It is chosen when
    ``mean(d) > se(d)`` with ``d = best.folds - default.folds`` fold by fold (the folds are shared, so
    the difference is paired: ``se(d) = stdev(d) / sqrt(n)``); with one fold (one held-out set)
    ``se(d) = sqrt(best.se ** 2 + default.se ** 2)``. Otherwise ``default``.

    Example:
        >>> a = CandidateScore(0.80, 0.01, (0.79, 0.80, 0.81))
        >>> b = CandidateScore(0.81, 0.02, (0.78, 0.82, 0.83))
        >>> choose({"plain": a, "other": b}, "plain")
        'plain'
    """
    names = list(scores)
    best = max(names, key=lambda n: (scores[n].mean, -names.index(n)))
    if best == default:
        return default
    diffs = [b - d for b, d in zip(scores[best].folds, scores[default].folds)]
    se = standard_error(diffs) if len(diffs) > 1 else math.hypot(scores[best].se, scores[default].se)
    return best if sum(diffs) / len(diffs) > se else default


def trial_epochs(epochs: int, trainings: int, share: float, budget: float = BUDGET) -> int:
    """Epochs per trial so that ``trainings`` trials on ``share`` of the data cost about ``budget`` final runs (at least 1).

    ``max(1, round(budget * epochs / (trainings * share)))``.
    """
    return max(1, round(budget * epochs / (trainings * share)))


def subset_loaders(loader: Any, val_rows: torch.Tensor) -> tuple[Any, Any]:
    """``(train, val)`` loaders: ``loader`` without ``val_rows``, and ``val_rows`` alone (no shuffling, no augmentation).

    Works for an :class:`InMemoryLoader` (the training part keeps its options) and a ``DataLoader``
    over a map-style data set, as :func:`warmstart.data.split_loader`.
    """
    keep = torch.ones(_size(loader), dtype=torch.bool)
    keep[val_rows] = False
    kept = torch.nonzero(keep).flatten()
    if isinstance(loader, InMemoryLoader):
        on = loader.inputs.device
        train = InMemoryLoader(loader.inputs[kept.to(on)], loader.targets[kept.to(on)], batch_size=loader.batch_size,
                               shuffle=loader.shuffle, drop_last=loader.drop_last, seed=loader.seed,
                               transform=loader.transform)
        return train, InMemoryLoader(loader.inputs[val_rows.to(on)], loader.targets[val_rows.to(on)],
                                     batch_size=loader.batch_size)
    sampler = RandomSampler(Subset(loader.dataset, kept.tolist()), generator=loader.generator) \
        if isinstance(loader.sampler, RandomSampler) else None
    return (rebuild_loader(loader, dataset=Subset(loader.dataset, kept.tolist()), sampler=sampler),
            rebuild_loader(loader, dataset=Subset(loader.dataset, val_rows.tolist()), sampler=None, drop_last=False))


def labels_of_loader(loader: Any) -> torch.Tensor:
    """The class labels of a labelled :class:`InMemoryLoader` or of a ``DataLoader`` over a map-style data set.

    Raises:
        DataError: a loader without labels, or one whose data cannot be indexed.
    """
    if isinstance(loader, InMemoryLoader) and loader.targets is not None:
        return loader.targets.cpu()
    if isinstance(loader, DataLoader) and hasattr(loader.dataset, "__getitem__"):
        return labels_of(loader.dataset)
    raise DataError(f"choosing by validation splits the labels, and a {type(loader).__name__} cannot be split: pass a "
                    "val_loader, or a DataLoader / InMemoryLoader over labelled data")


def _size(loader: Any) -> int:
    return len(loader.targets) if isinstance(loader, InMemoryLoader) else len(loader.dataset)


def select(names: Sequence[str], score: Callable[[str, Any, Any, int], float], loader: Any, epochs: int, *,
           val_loader: Any = None, val_fraction: float = 0.2, folds: int = 3, repeats: int = 1,
           cv_below: int = CV_BELOW, seed: int = 0, budget: float = BUDGET,
           cost_of: Mapping[str, float] | None = None) -> Selection:
    """Score every candidate by validation and choose with :func:`choose`, ``names[0]`` being the default.

    The scoring, in this order: on ``val_loader`` when given; else, under ``cv_below`` labelled
    samples, repeated stratified k-fold cross-validation (``folds`` x ``repeats`` trainings per
    candidate, each on ``(folds - 1) / folds`` of the labels, scored on the rest); else one
    stratified held-out ``val_fraction``. Each trial trains :func:`trial_epochs` epochs so that
    all the trials together cost about ``budget`` runs of ``epochs`` on all the data: with the
    defaults (3 folds, 1 repeat, budget 2) the choice and the final run cost about 3x one run.

    Args:
        names: the candidates; the first is the default (the plain way).
        score: ``score(name, train_loader, val_loader, epochs)`` trains a fresh copy the candidate's
            way and returns its accuracy on ``val_loader``.
        loader: the labelled training data.
        epochs: epochs of the final run (the trials' epochs are set from it).
        val_loader: labelled validation data to score on instead of splitting ``loader``.
        val_fraction: share of each class held out when the data is too large to cross-validate.
        folds: folds of the cross-validation.
        repeats: repeats of the cross-validation, each with other folds.
        cv_below: cross-validate below this many labelled samples.
        seed: seed of the folds and the held-out split.
        budget: the trials' cost in final runs.
        cost_of: a candidate's cost per epoch relative to the others (default 1 each), e.g. more
            data per epoch; used for the reported cost only, which is then in runs of the chosen
            candidate: ``sum(cost_of[n] for n in names) * splits * trial_epochs * share / (cost_of[choice] * epochs)``.

    Returns:
        A :class:`Selection`.

    Raises:
        DataError: the labels cannot be split (no ``val_loader`` and a loader that cannot be
            indexed), or too few to hold one out.

    Example:
        >>> data = InMemoryLoader(torch.randn(30, 2), torch.arange(30) % 3, batch_size=8)
        >>> picked = select(["plain", "other"], lambda n, tr, va, e: 0.5, data, epochs=4)
        >>> picked.choice, picked.validation
        ('plain', '3-fold x 1 cross-validation on 30 labels')
    """
    if val_loader is not None:
        splits, share = [(loader, val_loader, _val_size(val_loader))], 1.0
        validation = "the validation loader"
    elif _size(loader) < cv_below:
        labels = labels_of_loader(loader)
        splits = [(*subset_loaders(loader, rows), len(rows)) for r in range(repeats)
                  for rows in stratified_folds(labels, folds, seed + r)]
        share = (folds - 1) / folds
        validation = f"{folds}-fold x {repeats} cross-validation on {len(labels)} labels"
    else:
        kept, held = held_out_rows(labels_of_loader(loader), val_fraction, seed)
        splits, share = [(*subset_loaders(loader, held), len(held))], len(kept) / (len(kept) + len(held))
        validation = f"a held-out {val_fraction:.0%} of {len(kept) + len(held)} labels"
    trainings = len(names) * len(splits)
    each = trial_epochs(epochs, trainings, share, budget)
    results = {name: summarise([score(name, train, val, each) for train, val, _ in splits],
                               sum(size for *_, size in splits)) for name in names}
    choice, weight = choose(results, names[0]), cost_of or {}
    cost = sum(weight.get(n, 1.0) for n in names) * len(splits) * each * share / (weight.get(choice, 1.0) * epochs)
    batches = len(splits[0][0]) if hasattr(splits[0][0], "__len__") else None
    return Selection(choice=choice, default=names[0], scores=results, validation=validation, trainings=trainings,
                     trial_epochs=each, cost=cost, trial_steps=None if batches is None else batches * each)


def _val_size(loader: Any) -> int:
    size = getattr(loader, "dataset_size", None)
    if size is not None:
        return int(size)
    dataset = getattr(loader, "dataset", None)
    return len(dataset) if dataset is not None and hasattr(dataset, "__len__") else 0
