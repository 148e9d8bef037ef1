"""The splits a choice is scored on: stratified folds of the labels, made by the loader's one way of taking a part."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from warmstart._batches import target_of
from warmstart._runtime import batch_size_of
from warmstart.data.loaders import InMemoryLoader, held_out_rows, subset_loader
from warmstart.errors import DataError


@dataclasses.dataclass
class Split:
    """One training part and the validation part it is scored on.

    Attributes:
        train: the loader a trial trains on.
        val: the loader it is scored on (class labels, in order, without augmentation).
        count: the validation samples.
        labels: the validation labels, when they can be read without a pass over the data.
    """

    train: Any
    val: Any
    count: int
    labels: torch.Tensor | None = None


def stratified_folds(labels: torch.Tensor, folds: int, seed: int = 0) -> list[torch.Tensor]:
    """The validation rows of each of ``folds`` stratified folds (sorted; together every row once).

    Each class's rows are shuffled with ``seed`` and dealt out in turn, continuing where the last
    class stopped, so each fold holds ``floor`` or ``ceil`` of ``n_c / folds`` of every class ``c``
    and the fold sizes differ by at most one.

    Raises:
        DataError: ``folds < 2``, or fewer labelled rows than folds.

    Examples:
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


def class_labels(targets: torch.Tensor) -> torch.Tensor:
    """Class indices of targets: labels as they are, soft ``(N, C)`` targets by their most probable class.

    Raises:
        DataError: targets that are not classes (regression values): a choice by accuracy needs classes.
    """
    if targets.dim() == 2 and targets.is_floating_point():
        return targets.argmax(dim=-1)
    if targets.dim() != 1 or targets.is_floating_point():
        raise DataError(f"choosing by validation accuracy needs class labels, but the targets are {targets.dtype} of "
                        f"shape {tuple(targets.shape)} (regression values?): pass select=False, or class labels")
    return targets


def labels_of_loader(loader: Any) -> torch.Tensor:
    """The class labels of a labelled :class:`InMemoryLoader` or of a ``DataLoader`` over a map-style data set.

    Soft ``(N, C)`` targets give their most probable class (see :func:`class_labels`).

    Raises:
        DataError: a loader without labels, one whose data cannot be indexed, or targets that are not classes.
    """
    if isinstance(loader, InMemoryLoader) and loader.targets is not None:
        return class_labels(loader.targets.cpu())
    if isinstance(loader, DataLoader) and hasattr(loader.dataset, "__getitem__"):
        return class_labels(dataset_labels(loader.dataset))
    raise DataError(f"choosing by validation splits the labels, and a {type(loader).__name__} cannot be split: pass a "
                    "val_loader, or a DataLoader / InMemoryLoader over labelled data")


def dataset_labels(dataset: Dataset) -> torch.Tensor:
    """The targets of a map-style data set: its ``labels`` tensor (text sets), a ``TensorDataset``'s, or item by item
    (``(x, y)`` items, or dict items with ``"labels"``)."""
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1].cpu()
    labels = getattr(dataset, "labels", None)
    if isinstance(labels, torch.Tensor) and len(labels) == len(dataset):  # type: ignore[arg-type]
        return labels.cpu()
    return torch.stack([torch.as_tensor(_target(dataset[i])) for i in range(len(dataset))])  # type: ignore[arg-type]


def _target(item: Any) -> Any:
    if isinstance(item, dict):
        if "labels" not in item:
            raise DataError(f"choosing by validation splits the labels, and these items (dicts of {', '.join(item)}) "
                            "hold none under 'labels': pass a val_loader")
        return item["labels"]
    return item[1]


def _soft_items(dataset: Dataset) -> bool:
    first = _target(dataset[0])  # type: ignore[index]
    return isinstance(first, torch.Tensor) and first.dim() == 1 and first.is_floating_point()


def sample_count(loader: Any) -> int:
    """Labelled samples in a loader: its data set's size when it has one, else counted batch by batch (a list)."""
    size = getattr(loader, "dataset_size", None)
    if size is not None:
        return int(size)
    dataset = getattr(loader, "dataset", None)
    if isinstance(loader, DataLoader) and hasattr(dataset, "__len__") and loader.batch_sampler is not None:
        return len(loader.batch_sampler.sampler) if hasattr(loader.batch_sampler, "sampler") else len(dataset)
    return sum(batch_size_of(batch) for batch in loader)


def scoring_loader(loader: Any) -> tuple[Any, torch.Tensor | None]:
    """``loader`` with class-index targets for scoring (soft targets by their most probable class), and its labels
    when they can be read without a pass over the data."""
    if isinstance(loader, InMemoryLoader) and loader.targets is not None:
        labels = class_labels(loader.targets)
        if labels is not loader.targets:
            loader = InMemoryLoader(loader.inputs, labels, batch_size=loader.batch_size, transform=loader.transform)
        return loader, labels.cpu()
    if isinstance(loader, (list, tuple)):
        labels = [class_labels(torch.as_tensor(target_of(batch))) for batch in loader]
        return loader, torch.cat(labels).cpu() if labels else None
    if isinstance(loader, DataLoader) and isinstance(loader.dataset, Subset) and _soft_items(loader.dataset):
        from warmstart.data.loaders import rebuild_loader

        return rebuild_loader(loader, dataset=_HardLabels(loader.dataset)), None
    return loader, None


class _HardLabels(Dataset):
    """A data set of ``(x, soft target)`` items as ``(x, most probable class)``."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        x, target, *rest = self.dataset[index]
        return (x, int(torch.as_tensor(target).argmax()), *rest)


def cross_validation_splits(loader: Any, folds: int, repeats: int, seed: int) -> list[Split]:
    """``folds`` x ``repeats`` stratified splits of ``loader`` (each repeat with other folds)."""
    labels = labels_of_loader(loader)
    splits = []
    for r in range(repeats):
        for rows in stratified_folds(labels, folds, seed + r):
            splits.append(_split(loader, rows, labels))
    return splits


def held_out_split(loader: Any, fraction: float, seed: int) -> tuple[Split, float]:
    """One stratified ``fraction`` held out of ``loader``, and the share of the labels left to train on."""
    labels = labels_of_loader(loader)
    kept, held = held_out_rows(labels, fraction, seed)
    return _split(loader, held, labels), len(kept) / len(labels)


def given_split(loader: Any, val_loader: Iterable[Any]) -> Split:
    """Train on all of ``loader``, score on the user's ``val_loader`` (its real sample count, whatever it is)."""
    val, labels = scoring_loader(val_loader)
    count = len(labels) if labels is not None else sample_count(val)
    if count == 0:
        raise DataError("the val_loader holds no samples to choose on: pass labelled validation batches, or leave "
                        "val_loader out to cross-validate on the training labels")
    return Split(loader, val, count, labels)


def _split(loader: Any, val_rows: torch.Tensor, labels: torch.Tensor) -> Split:
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[val_rows] = False
    train = subset_loader(loader, torch.nonzero(keep).flatten())
    val, _ = scoring_loader(subset_loader(loader, val_rows, evaluation=True))
    return Split(train, val, len(val_rows), labels[val_rows])
