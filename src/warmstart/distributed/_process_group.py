"""Process groups under ``torchrun`` (DDP and FSDP), rank queries, sharded loaders and reductions."""

from __future__ import annotations

import collections
import math
import os
import time
import warnings
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import (
    DataLoader,
    DistributedSampler,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

from warmstart.data.loaders import rebuild_loader
from warmstart.errors import ConfigError

# Gloo's worker thread drops its reference to a collective's tensors just after the caller's wait() returns. If
# Python has let go of the tensor first, that drop takes the GIL, and a process already finalizing then aborts
# ("terminate called without an active exception", exit -6). Keeping the last few tensors here makes Python's
# reference the last one, dropped by the main thread.
_RECENT: collections.deque[torch.Tensor] = collections.deque(maxlen=16)
_GLOO_FLUSHES = 4  # collectives run by close_process_group after its barrier


def launched_by_torchrun() -> bool:
    """True when the environment says this process is one of several started by ``torchrun``."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: torch.device) -> bool:
    """Join the process group ``torchrun`` describes (NCCL on CUDA, Gloo otherwise), once.

    Returns:
        True when running distributed (more than one process).
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    if not launched_by_torchrun():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist.get_world_size() > 1


def init_process_group_for_sharding(device: torch.device) -> bool:
    """Join ``torchrun``'s process group, or make a group of this one process, so that FSDP has one to shard over.

    Returns:
        True when this process is alone without ``torchrun``: the model is then one shard.
    """
    under_torchrun = "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ  # any number of processes, 1 too
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if under_torchrun:
            dist.init_process_group(backend=backend)
        else:
            dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)
    return not under_torchrun and dist.get_world_size() == 1


def close_process_group() -> None:
    """Leave the process group at the end of a ``torchrun`` script: wait for every rank, then destroy the group.

    A Gloo worker thread drops its last reference to a finished collective's tensors just after the
    caller's ``wait()`` returns; if the interpreter is already shutting down then, the rank aborts
    ("terminate called without an active exception", exit -6) though its work was done. Hence the
    barrier (every collective before it has finished on every rank), then a few more collectives on
    a tensor Python holds (each worker thread lets go of its previous work before it takes the next),
    then a short pause for the threads that took none. A no-op without a process group.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    dist.barrier()
    if dist.get_backend() == "gloo":
        flush = torch.zeros(1)
        _RECENT.append(flush)
        for _ in range(_GLOO_FLUSHES):
            dist.all_reduce(flush)
        time.sleep(0.05)
    dist.destroy_process_group()


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """True on rank 0: the only process that logs and writes files."""
    return rank() == 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes in place (a no-op when not distributed); every rank must call it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        _RECENT.append(tensor)
    return tensor


def barrier() -> None:
    """Wait for every process (a no-op when not distributed)."""
    if is_distributed():
        dist.barrier()


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Take the element-wise maximum of ``tensor`` over all processes, in place (a no-op when not distributed)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        _RECENT.append(tensor)
    return tensor


def broadcast_from_main(tensor: torch.Tensor) -> torch.Tensor:
    """Give every rank rank 0's ``tensor`` (in place; a no-op when not distributed)."""
    if is_distributed():
        dist.broadcast(tensor, src=0)
        _RECENT.append(tensor)
    return tensor


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order, on every rank (``[obj]`` when not distributed); every rank must call it."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def rank_seed(seed: int, rank: int) -> int:
    """The seed of ``rank``'s random streams in a run seeded ``seed``: ``seed`` itself on rank 0, distinct on the others.

    Dropout and augmentation then differ between ranks (as they would between the halves of one
    larger batch) while the run stays reproducible from its seed.

    Examples:
        >>> rank_seed(7, 0), rank_seed(7, 1) != rank_seed(8, 0)
        (7, True)
    """
    if rank == 0:
        return seed
    import numpy as np

    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0]) % (2**31 - 1)


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True on every rank when ``flag`` is true on any rank; every rank must call it (a plain bool when not distributed).

    ``device`` must be one the process group's backend can reduce on (the trainer's device).
    """
    if not is_distributed():
        return flag
    return bool(all_reduce_max(torch.tensor([float(flag)], device=device)).item())


class ShardSampler(Sampler[int]):
    """Every ``world_size``-th index from ``rank``, without padding: for evaluation, where each sample counts once."""

    def __init__(self, length: int, rank: int, world_size: int):
        self.length, self.rank, self.world_size = length, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world_size))


def shard_loader(loader: Any, seed: int, train: bool) -> Any:
    """Give this rank its share of a loader's samples (the loader itself is not changed).

    Training loaders get a ``DistributedSampler`` that shuffles (with ``seed`` and the epoch) when
    the original loader shuffled, padded so that every rank takes as many steps; evaluation
    loaders get a :class:`ShardSampler`, so each sample is counted exactly once. Loaders with a
    ``shard(rank, world_size, pad)`` method (:class:`warmstart.data.InMemoryLoader`) shard
    themselves; plain lists (and tuples) of batches are dealt out by :func:`shard_batches`; other
    iterables are returned as they are (they must yield each rank's own batches).

    Raises:
        ConfigError: a ``DataLoader`` with a custom sampler (give it a ``DistributedSampler`` yourself).
    """
    if not is_distributed():
        return loader
    if isinstance(loader, (list, tuple)):
        return shard_batches(loader, rank(), world_size(), train)
    if hasattr(loader, "shard"):
        return loader.shard(rank(), world_size(), pad=train)
    if not isinstance(loader, DataLoader) or isinstance(loader.sampler, (DistributedSampler, ShardSampler)):
        return loader
    if loader.batch_sampler is not None and not isinstance(loader.sampler, (RandomSampler, SequentialSampler)):
        raise ConfigError("under torchrun the Trainer shards DataLoaders that use shuffle=True/False; for a custom "
                          "sampler, give the DataLoader a DistributedSampler yourself")
    if train:
        sampler: Sampler[int] = DistributedSampler(loader.dataset, shuffle=isinstance(loader.sampler, RandomSampler),
                                                   seed=seed, drop_last=loader.drop_last)
    else:
        sampler = ShardSampler(len(loader.dataset), rank(), world_size())
    return rebuild_loader(loader, sampler=sampler)


def shard_batches(batches: list[Any] | tuple[Any, ...], rank: int, world_size: int, train: bool) -> list[Any]:
    """Rank ``rank``'s share of a list of ready-made batches: batch ``i`` goes to rank ``i % world_size``.

    For training, every rank takes ``ceil(len / world_size)`` batches, the shares that fall short
    wrapping round to the first batches (as ``DistributedSampler`` pads), with a warning naming
    how many batches then train twice per epoch. For evaluation each batch is counted once; a list
    shorter than the world is evaluated whole on every rank (the reduced means are the same).

    Examples:
        >>> shard_batches(["b0", "b1", "b2", "b3"], rank=1, world_size=2, train=True)
        ['b1', 'b3']
    """
    batches, count = list(batches), len(batches)
    if not train:
        return batches[rank::world_size] if count >= world_size else batches
    per_rank = math.ceil(count / world_size)
    repeated = per_rank * world_size - count
    if repeated and rank == 0:
        warnings.warn(f"the training list of {count} batches does not divide among {world_size} ranks: each rank takes "
                      f"{per_rank} (batch i on rank i % {world_size}), so {repeated} batch(es) train twice per epoch. "
                      f"Give a multiple of {world_size} batches, or a DataLoader (sharded by sample).", stacklevel=3)
    return [batches[(rank + world_size * i) % count] for i in range(per_rank)] if count else []
