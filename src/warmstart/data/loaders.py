"""A loader for data sets that fit in memory: whole tensors on the device, shuffled by index, no workers."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import Dataset, TensorDataset

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
    the Trainer calls :meth:`shard` and each rank takes every ``world_size``-th sample of it.

    Args:
        data: a ``TensorDataset`` / map-style data set of ``(x, y)``, or the inputs tensor.
        targets: the targets tensor when ``data`` is a tensor; ``None`` for unlabelled inputs
            (batches are then ``(x,)``, e.g. for autoencoders or distillation with ``alpha=1``).
        batch_size: samples per batch (per process under ``torchrun``).
        shuffle: a new order every epoch.
        drop_last: drop the last, smaller batch.
        device: where to keep the tensors (``None``: where they are).
        seed: seed of the shuffling.
        transform: a batched augmentation applied to each input batch (e.g.
            ``build_augmentation("digits", batched=True)``); it draws from torch's global RNG.
        with_index: yield ``(x, y, index)``, the sample indices (for cached teacher logits).

    Example:
        >>> loader = InMemoryLoader(torch.arange(10.0).reshape(10, 1), torch.arange(10), batch_size=4)
        >>> [len(y) for _, y in loader]
        [4, 4, 2]
    """

    def __init__(self, data: Dataset | torch.Tensor, targets: torch.Tensor | None = None, *, batch_size: int = 64,
                 shuffle: bool = False, drop_last: bool = False, device: str | torch.device | None = None,
                 seed: int = 0, transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 with_index: bool = False):
        inputs, targets = (data, targets) if isinstance(data, torch.Tensor) else dataset_tensors(data)
        if targets is None and with_index:
            raise DataError("with_index=True needs targets: batches are (x, y, index)")
        if targets is not None and len(inputs) != len(targets):
            raise DataError(f"inputs and targets differ in length: {len(inputs)} vs {len(targets)}")
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        self.inputs = inputs if device is None else inputs.to(device)
        self.targets = None if targets is None else targets.to(self.inputs.device)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.seed, self.transform, self.with_index = seed, transform, with_index
        self.epoch, self.rank, self.world_size = 0, 0, 1

    @property
    def dataset_size(self) -> int:
        """Number of samples in the whole data set (all ranks)."""
        return len(self.inputs)

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` (the Trainer calls this before each epoch)."""
        self.epoch = epoch

    def shard(self, rank: int, world_size: int) -> None:
        """Take this rank's share of every epoch (padded by wrapping so all ranks have as many batches)."""
        self.rank, self.world_size = rank, world_size

    def _per_rank(self) -> int:
        return math.ceil(self.dataset_size / self.world_size)

    def order(self) -> torch.Tensor:
        """This rank's sample indices for the current epoch."""
        n = self.dataset_size
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        total = self._per_rank() * self.world_size
        if total > n:
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
            if self.targets is None:
                yield (x,)
            else:
                yield (x, self.targets[rows], rows) if self.with_index else (x, self.targets[rows])


class WithIndex(Dataset):
    """Wrap a data set of ``(x, y)`` so items are ``(x, y, index)`` (for cached teacher logits)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, Any, int]:
        x, y = self.dataset[index][:2]
        return x, y, index
