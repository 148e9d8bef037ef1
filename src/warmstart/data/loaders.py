"""A loader for data sets that fit in memory: whole tensors on the device, shuffled by index, no workers."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import (BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler, Subset,
                              TensorDataset, WeightedRandomSampler)

from warmstart.data.augment import is_random, without_augmentation
from warmstart.data.bundled import labels_of
from warmstart.errors import DataError


def dataset_tensors(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, targets)`` of a ``TensorDataset``, or stacked from any map-style data set of ``(x, y)``.

    Raises:
        DataError: an empty data set, or items that are not ``(x, y)`` pairs.
    """
    if isinstance(dataset, TensorDataset):
        if len(dataset.tensors) < 2:
            raise DataError("InMemoryLoader needs a TensorDataset of (inputs, targets)")
        return dataset.tensors[0], dataset.tensors[1]
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise DataError("the data set is empty")
    items = [dataset[i] for i in range(n)]
    if not all(isinstance(item, (tuple, list)) and len(item) >= 2 for item in items[:1]):
        raise DataError("InMemoryLoader needs a data set of (x, y) items")
    return (torch.stack([torch.as_tensor(item[0]) for item in items]),
            torch.as_tensor([item[1] for item in items]))


class InMemoryLoader:
    """Batches of tensors that already sit on the device, shuffled by index each epoch.

    The fast path for small data sets (the way the fastest CIFAR-10 trainers feed a GPU): no
    worker processes, no per-sample collation, one index per batch. The order of epoch ``e`` is
    a permutation drawn from ``(seed, e)``, so it is the same after a resume; under ``torchrun``
    the Trainer takes this rank's share with :meth:`shard`.

    Args:
        data: a ``TensorDataset`` / map-style data set of ``(x, y)``, or the inputs tensor.
        targets: the targets tensor when ``data`` is a tensor; ``None`` for unlabelled inputs
            (batches are then ``(x,)``, e.g. for autoencoders or distillation with ``alpha=1``).
        batch_size: samples per batch (per process under ``torchrun``).
        shuffle: a new order every epoch.
        drop_last: drop the last, smaller batch.
        device: where to keep the tensors (``None``: where they are).
        seed: seed of the shuffling; ``None`` draws one from torch's global generator (so
            ``torch.manual_seed`` decides the order), kept in :attr:`seed`.
        transform: a batched augmentation applied to each input batch (e.g.
            ``build_augmentation("digits", batched=True)``); it draws from torch's global RNG.
        with_index: also yield the sample indices, last: ``(x, y, index)``, or ``(x, index)``
            for unlabelled inputs (for cached teacher logits).

    Examples:
        >>> loader = InMemoryLoader(torch.arange(10.0).reshape(10, 1), torch.arange(10), batch_size=4)
        >>> [len(y) for _, y in loader]
        [4, 4, 2]
    """

    def __init__(self, data: Dataset | torch.Tensor, targets: torch.Tensor | None = None, *, batch_size: int = 64,
                 shuffle: bool = False, drop_last: bool = False, device: str | torch.device | None = None,
                 seed: int | None = None, transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 with_index: bool = False):
        inputs, targets = (data, targets) if isinstance(data, torch.Tensor) else dataset_tensors(data)
        if targets is not None and len(inputs) != len(targets):
            raise DataError(f"inputs and targets differ in length: {len(inputs)} vs {len(targets)}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise DataError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.inputs = inputs if device is None else inputs.to(device)
        self.targets = None if targets is None else targets.to(self.inputs.device)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.seed = int(torch.randint(2**31 - 1, ()).item()) if seed is None else seed
        self.transform, self.with_index = transform, with_index
        self.epoch, self.rank, self.world_size, self.pad = 0, 0, 1, True

    @property
    def dataset_size(self) -> int:
        """Number of samples in the whole data set (all ranks)."""
        return len(self.inputs)

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` (the Trainer calls this before each epoch)."""
        self.epoch = epoch

    def clone(self, **changes: Any) -> InMemoryLoader:
        """A loader over the same tensors with some options changed (``batch_size``, ``transform``, ...).

        Examples:
            >>> loader = InMemoryLoader(torch.zeros(6, 1), torch.zeros(6, dtype=torch.long), batch_size=4)
            >>> len(loader.clone(batch_size=2))
            3
        """
        options = {"batch_size": self.batch_size, "shuffle": self.shuffle, "drop_last": self.drop_last,
                   "seed": self.seed, "transform": self.transform, "with_index": self.with_index, **changes}
        copy = InMemoryLoader(self.inputs, self.targets, **options)
        copy.epoch, copy.rank, copy.world_size, copy.pad = self.epoch, self.rank, self.world_size, self.pad
        return copy

    def subset(self, rows: torch.Tensor, evaluation: bool = False) -> InMemoryLoader:
        """A loader over the samples ``rows`` of this one: a training part keeps every option, an evaluation part
        reads them in order, whole, with the deterministic part of the transform only.

        Args:
            rows: sample indices (a 1-D integer tensor).
            evaluation: the part is for scoring: no shuffling, no dropped batch, and the transform
                without its random steps (:func:`warmstart.data.without_augmentation`), so the
                model still gets inputs resized and normalised as in training.

        Examples:
            >>> loader = InMemoryLoader(torch.arange(6.0).view(6, 1), torch.arange(6), batch_size=4, shuffle=True)
            >>> val = loader.subset(torch.tensor([1, 4]), evaluation=True)
            >>> val.targets.tolist(), val.shuffle
            ([1, 4], False)
        """
        rows = rows.to(self.inputs.device)
        targets = None if self.targets is None else self.targets[rows]
        if evaluation:
            return InMemoryLoader(self.inputs[rows], targets, batch_size=self.batch_size,
                                  transform=without_augmentation(self.transform))
        return InMemoryLoader(self.inputs[rows], targets, batch_size=self.batch_size, shuffle=self.shuffle,
                              drop_last=self.drop_last, seed=self.seed, transform=self.transform,
                              with_index=self.with_index)

    def shard(self, rank: int, world_size: int, pad: bool = True) -> InMemoryLoader:
        """This rank's share of every epoch: every ``world_size``-th sample of the epoch's order.

        Args:
            rank: this process's rank.
            world_size: number of processes.
            pad: repeat samples from the start so every rank has as many (training: ranks take the
                same number of steps); ``False`` leaves shards uneven (evaluation: each sample once).
        """
        copy = self.clone()
        copy.rank, copy.world_size, copy.pad = rank, world_size, pad
        return copy

    def _per_rank(self) -> int:
        if self.pad:
            return math.ceil(self.dataset_size / self.world_size)
        return len(range(self.rank, self.dataset_size, self.world_size))

    def order(self) -> torch.Tensor:
        """This rank's sample indices for the current epoch."""
        n = self.dataset_size
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        total = math.ceil(n / self.world_size) * self.world_size
        if self.pad and total > n:
            order = torch.cat([order, order[: total - n]])
        return order[self.rank::self.world_size].to(self.inputs.device)

    def __len__(self) -> int:
        per_rank = self._per_rank()
        return per_rank // self.batch_size if self.drop_last else math.ceil(per_rank / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        order = self.order()
        for b in range(len(self)):
            rows = order[b * self.batch_size:(b + 1) * self.batch_size]
            x = self.inputs[rows]
            if self.transform is not None:
                x = self.transform(x)
            batch = (x,) if self.targets is None else (x, self.targets[rows])
            yield (*batch, rows) if self.with_index else batch


def rebuild_loader(loader: DataLoader, **changes: Any) -> DataLoader:
    """A ``DataLoader`` like ``loader`` with some arguments changed, keeping every other one.

    Args:
        loader: the loader to copy.
        **changes: ``DataLoader`` arguments to change (``dataset``, ``sampler``, ``batch_size``, ...).
            The loader's sampler (its shuffling) is kept unless ``sampler`` is given.

    Examples:
        >>> from torch.utils.data import TensorDataset
        >>> loader = DataLoader(TensorDataset(torch.zeros(6, 1)), batch_size=4, shuffle=True)
        >>> len(rebuild_loader(loader, batch_size=2))
        3
    """
    options: dict[str, Any] = {
        "dataset": loader.dataset, "batch_size": loader.batch_size, "num_workers": loader.num_workers,
        "collate_fn": loader.collate_fn, "pin_memory": loader.pin_memory, "drop_last": loader.drop_last,
        "timeout": loader.timeout, "worker_init_fn": loader.worker_init_fn, "generator": loader.generator,
        "multiprocessing_context": loader.multiprocessing_context, "persistent_workers": loader.persistent_workers,
        "pin_memory_device": loader.pin_memory_device, "in_order": getattr(loader, "in_order", True),
    }
    if loader.num_workers > 0:
        options["prefetch_factor"] = loader.prefetch_factor
    if loader.batch_sampler is None:  # batch_size=None: the dataset yields whole batches
        options["batch_size"] = None
    if type(loader.batch_sampler) not in (BatchSampler, type(None)) and not {"sampler", "batch_size"} & set(changes):
        options.update(batch_sampler=loader.batch_sampler, batch_size=1, drop_last=False)  # a custom batch sampler
    else:
        options["sampler"] = loader.sampler
    options.update(changes)
    return DataLoader(**options)


def held_out_rows(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified ``(kept, held_out)`` row indices: ``round(fraction * n_c)`` of each class with 2+ samples held out (at least 1).

    Examples:
        >>> kept, held = held_out_rows(torch.tensor([0, 0, 0, 0, 1, 1]), 0.25, seed=0)
        >>> len(kept), len(held)
        (4, 2)
    """
    if not 0 < fraction < 1:
        raise DataError(f"the validation fraction must be in (0, 1), got {fraction}")
    g = torch.Generator().manual_seed(seed)
    held = []
    for label in labels.unique().tolist():
        rows = torch.nonzero(labels == label).flatten()
        if len(rows) >= 2:
            count = min(len(rows) - 1, max(1, round(fraction * len(rows))))
            held.append(rows[torch.randperm(len(rows), generator=g)[:count]])
    held_rows = torch.cat(held).sort().values if held else torch.zeros(0, dtype=torch.long)
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[held_rows] = False
    return torch.nonzero(keep).flatten(), held_rows


def split_loader(loader: Any, fraction: float = 0.2, seed: int = 0) -> tuple[Any, Any]:
    """Hold a stratified validation split out of a labelled loader: ``(train_loader, val_loader)``.

    The two parts are made by :func:`subset_loader`: the training part keeps the loader's options
    (sampler, augmentation), the validation part reads its samples in order without augmentation.

    Args:
        loader: the labelled training loader (an :class:`InMemoryLoader`, or a ``DataLoader``
            over a map-style data set).
        fraction: share of each class held out (at least one sample of every class with two or more).
        seed: seed of the draw.

    Raises:
        DataError: an unlabelled loader, or one that cannot be split (an iterable without a data set).

    Examples:
        >>> loader = InMemoryLoader(torch.zeros(10, 1), torch.arange(10) % 2, batch_size=4)
        >>> train, val = split_loader(loader, 0.2)
        >>> train.dataset_size, val.dataset_size
        (8, 2)
    """
    if isinstance(loader, InMemoryLoader) and loader.targets is None:
        raise DataError("a validation split needs labels, and this InMemoryLoader has none")
    if isinstance(loader, InMemoryLoader):
        labels = loader.targets.cpu()
    elif isinstance(loader, DataLoader) and hasattr(loader.dataset, "__getitem__"):
        labels = labels_of(loader.dataset)
    else:
        raise DataError(f"cannot hold a validation split out of a {type(loader).__name__}: pass a val_loader, or a "
                        "DataLoader / InMemoryLoader that can be split")
    kept, held = held_out_rows(labels if labels.dim() == 1 else labels.argmax(-1), fraction, seed)
    return subset_loader(loader, kept), subset_loader(loader, held, evaluation=True)


def subset_loader(loader: Any, rows: torch.Tensor, evaluation: bool = False) -> Any:
    """The samples ``rows`` of a loader's data set, as a loader of the same kind: the one way folds are made.

    An :class:`InMemoryLoader` gives :meth:`InMemoryLoader.subset`. A ``DataLoader`` over a
    map-style data set keeps its batch size, workers and collation; for training its sampler too
    (a ``RandomSampler`` shuffles the part, a ``WeightedRandomSampler`` keeps the part's weights and
    draws as many samples per row as before), with copies of its generators (a part never moves the
    state the whole loader draws from); for evaluation the part is read in order, whole, with
    the data set's transform without its random steps (:func:`dataset_without_augmentation`).

    Raises:
        DataError: a loader whose sampler or batch sampler cannot be restricted to a part of the
            data (a custom one): pass a ``val_loader`` instead of splitting it.

    Examples:
        >>> from torch.utils.data import TensorDataset
        >>> data = DataLoader(TensorDataset(torch.arange(6.0), torch.arange(6)), batch_size=4, shuffle=True)
        >>> [y.tolist() for _, y in subset_loader(data, torch.tensor([1, 4]), evaluation=True)]
        [[1, 4]]
    """
    if isinstance(loader, InMemoryLoader):
        return loader.subset(rows, evaluation)
    rows_list = rows.tolist()
    if evaluation:
        return rebuild_loader(loader, dataset=Subset(dataset_without_augmentation(loader.dataset), rows_list),
                              sampler=None, batch_size=_batch_size(loader), drop_last=False)
    return rebuild_loader(loader, dataset=Subset(loader.dataset, rows_list), sampler=_part_sampler(loader, rows),
                          batch_size=_batch_size(loader), generator=_copy_generator(loader.generator))


def _batch_size(loader: DataLoader) -> int | None:
    """The loader's batch size; a custom batch sampler is refused (it cannot be restricted to a part)."""
    if loader.batch_sampler is None:
        return None
    if type(loader.batch_sampler) is not BatchSampler:
        raise DataError(f"this DataLoader draws its batches with a {type(loader.batch_sampler).__name__}, which cannot "
                        "be restricted to a part of the data: pass a val_loader instead of letting it be split")
    return loader.batch_sampler.batch_size


def _part_sampler(loader: DataLoader, rows: torch.Tensor) -> Any:
    """The loader's sampler over the part ``rows`` (``None``: in order)."""
    sampler, n = loader.sampler, len(loader.dataset)  # type: ignore[arg-type]
    if isinstance(sampler, WeightedRandomSampler):
        draws = max(1, round(sampler.num_samples * len(rows) / n))
        return WeightedRandomSampler(sampler.weights[rows], draws, replacement=sampler.replacement,
                                     generator=_copy_generator(sampler.generator))
    if isinstance(sampler, RandomSampler):
        draws = None if sampler._num_samples is None else max(1, round(sampler.num_samples * len(rows) / n))
        return RandomSampler(range(len(rows)), replacement=sampler.replacement, num_samples=draws,
                             generator=_copy_generator(sampler.generator))
    if isinstance(sampler, SequentialSampler):
        return None
    raise DataError(f"this DataLoader draws its samples with a {type(sampler).__name__}, which cannot be restricted "
                    "to a part of the data: pass a val_loader instead of letting it be split")


def _copy_generator(generator: torch.Generator | None) -> torch.Generator | None:
    """A generator in ``generator``'s state: a part draws as the whole would, without moving the user's generator."""
    if generator is None:
        return None
    copy_of = torch.Generator(device=generator.device)
    copy_of.set_state(generator.get_state())
    return copy_of


def dataset_without_augmentation(dataset: Dataset) -> Dataset:
    """A shallow copy of ``dataset`` (or of the data set it wraps) whose ``transform`` has no random steps.

    The copy shares the data; only the transform differs (:func:`warmstart.data.without_augmentation`).
    A data set without random steps is returned as it is.
    """
    transform = getattr(dataset, "transform", None)
    inner = getattr(dataset, "dataset", None)
    if transform is not None and is_random(transform):
        plain = copy.copy(dataset)
        plain.transform = without_augmentation(transform)  # type: ignore[attr-defined]
        if hasattr(dataset, "transforms") and hasattr(dataset, "target_transform"):  # torchvision's VisionDataset
            from torchvision.datasets.vision import StandardTransform

            plain.transforms = StandardTransform(plain.transform, dataset.target_transform)  # type: ignore[attr-defined]
        return plain
    if isinstance(inner, Dataset) and transform is None:
        plain_inner = dataset_without_augmentation(inner)
        if plain_inner is not inner:
            wrapper = copy.copy(dataset)
            wrapper.dataset = plain_inner  # type: ignore[attr-defined]
            return wrapper
    return dataset


class WithIndex(Dataset):
    """Wrap a data set so items are ``(x, y, index)``, or ``(x, index)`` for unlabelled ``(x,)`` items.

    The index comes last, as in :class:`InMemoryLoader` ``(with_index=True)`` (for cached teacher logits).
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        item = self.dataset[index]
        if isinstance(item, (tuple, list)):
            return (*item[:2], index)
        return item, index
