"""FSDP2 helpers of the FSDP strategy: shard a model block by block, move its optimizer over, gather it, evaluate in lockstep."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from warmstart._blocks import checkpoint_activations, find_blocks
from warmstart._runtime import NO_CONTEXT
from warmstart.config import TrainerConfig
from warmstart.distributed import _process_group as distributed
from warmstart.errors import ConfigError, DataError

_DTYPES = {"bf16": torch.bfloat16, "16": torch.float16}


def checkpoint_blocks(model: nn.Module, config: TrainerConfig) -> list[str]:
    """Recompute the activations of ``model``'s blocks in the backward pass (in place); their dotted names.

    The blocks are ``config.fsdp.blocks``, or found automatically (:func:`warmstart._blocks.find_blocks`).
    """
    blocks = find_blocks(model, config.fsdp.blocks)
    if not blocks:
        warnings.warn(f"activation_checkpointing: {type(model).__name__} has no repeated blocks to checkpoint; "
                      "name them with fsdp={'blocks': [...]} (module classes or dotted names)", stacklevel=5)
    checkpoint_activations(blocks)
    return [name for name, _ in blocks]


def shard(model: nn.Module, config: TrainerConfig, precision: str, device: torch.device, optimizer: Any = None) -> None:
    """Shard ``model`` with FSDP2 in place: each block gets ``fully_shard``, then the root does.

    Parameters become ``DTensor`` s sharded on dim 0 over the processes, cut from rank 0's weights
    (broadcast first, so ranks that initialised differently agree); an ``optimizer`` built before is
    moved onto the sharded parameters. Without ``torchrun`` the model is one shard (a
    warning says how to launch).

    Raises:
        ConfigError: ``fsdp.blocks`` names no module, or the optimizer has already stepped.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import (
        CPUOffloadPolicy,
        MixedPrecisionPolicy,
        OffloadPolicy,
        fully_shard,
    )

    blocks = find_blocks(model, config.fsdp.blocks)
    if isinstance(optimizer, torch.optim.Optimizer) and optimizer.state:
        raise ConfigError("strategy='fsdp' replaces the model's parameters by sharded ones: pass an optimizer that has "
                          "not stepped yet (or an optimizer config), so that its state is built on the shards")
    if distributed.init_process_group_for_sharding(device):
        warnings.warn("strategy='fsdp' without torchrun: training as a single shard (no memory saved); launch with "
                      "`torchrun --nproc_per_node=N script.py` to shard over N processes", stacklevel=5)
    if not blocks:
        warnings.warn(f"strategy='fsdp': no repeated blocks found in {type(model).__name__}, so it is sharded as one "
                      "unit (every parameter is gathered at once in the forward pass); name the blocks with "
                      "fsdp={'blocks': [...]} (module classes, class names or dotted module names)", stacklevel=5)
    fsdp = config.fsdp
    if fsdp.cpu_offload and device.type != "cuda":
        raise ConfigError(f"fsdp.cpu_offload keeps the shards in CPU memory while a GPU computes; on device "
                          f"{device.type!r} the shards are in CPU memory already: leave cpu_offload off")
    dtype = _DTYPES.get(precision)
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32 if dtype and fsdp.reduce_fp32 else None)
    options = {"mesh": init_device_mesh(device.type, (torch.distributed.get_world_size(),)), "mp_policy": policy,
               "offload_policy": CPUOffloadPolicy() if fsdp.cpu_offload else OffloadPolicy()}
    names_before = {id(p): name for name, p in model.named_parameters()}
    for tensor in [*model.parameters(), *model.buffers()]:  # every rank shards rank 0's weights, as DDP replicates them
        distributed.broadcast_from_main(tensor.detach())
    for _, block in blocks:
        fully_shard(block, reshard_after_forward=fsdp.reshard_after_forward, **options)
    fully_shard(model, **options)  # the root: what no block holds (embeddings, head), gathered for the whole step
    if isinstance(optimizer, torch.optim.Optimizer):
        _move_optimizer(optimizer, names_before, model)


def clip_grad_norm(parameters: list[torch.Tensor], max_norm: float) -> None:
    """Clip the gradients of sharded (``DTensor``) and plain parameters together to a total norm of ``max_norm``.

    The sharded gradients' norm is reduced over the ranks; plain parameters (a hint adapter beside
    the sharded model) hold the same gradient on every rank and count once.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    sharded = [g for g in grads if hasattr(g, "full_tensor")]
    plain = [g for g in grads if not hasattr(g, "full_tensor")]
    squares = torch.zeros((), device=grads[0].device if grads else "cpu")
    if sharded:
        norm = torch.nn.utils.get_total_norm(sharded, foreach=True)
        squares = squares + (norm.full_tensor() if hasattr(norm, "full_tensor") else norm).float() ** 2
    if plain:
        squares = squares + torch.nn.utils.get_total_norm(plain, foreach=True).float().to(squares.device) ** 2
    total = squares.sqrt()
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:  # the same factor as clip_grad_norm_: max_norm / (norm + 1e-6), never above 1
        (g.to_local() if hasattr(g, "to_local") else g).mul_(scale.to(g.dtype))


def _move_optimizer(optimizer: torch.optim.Optimizer, names_before: dict[int, str], model: nn.Module) -> None:
    """Point an optimizer built on the unsharded parameters at the sharded ones (matched by name)."""
    sharded = dict(model.named_parameters())
    for group in optimizer.param_groups:
        unknown = [p for p in group["params"] if id(p) not in names_before]
        if unknown:
            raise ConfigError(f"the optimizer holds {len(unknown)} tensors that are not parameters of the model; under "
                              "strategy='fsdp' it must optimize the model's own parameters")
        group["params"] = [sharded[names_before[id(p)]] for p in group["params"]]


def is_sharded(model: nn.Module) -> bool:
    """True for a module that ``fully_shard`` was applied to."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def reshard(model: nn.Module) -> None:
    """Free the gathered parameters a forward pass left (the root keeps its own after a forward without backward).

    After this the registered parameters are the shards again: what state dicts, checkpoints and
    in-place updates must see.
    """
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def no_gradient_sync(model: nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
    """Skip the gradient reduce-scatter on micro-batches that do not end an accumulation window (FSDP's ``no_sync``).

    The gradients of those micro-batches accumulate unsharded on each rank until the last one reduces them.
    """
    if not enabled:
        return NO_CONTEXT
    return _without_sync(model)


@contextlib.contextmanager
def _without_sync(model: Any) -> Iterator[None]:
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def gather_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The full (unsharded) weights on rank 0's CPU, ``{}`` on the other ranks; every rank must call it.

    Without ``state_dict`` these are ``model``'s (gathered one tensor at a time); otherwise the
    ``DTensor`` s of ``state_dict`` are gathered (an EMA's shards, say) and plain tensors kept.
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
    )

    reshard(model)
    if state_dict is None:
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    full, keep = {}, distributed.is_main_process()
    for name, value in state_dict.items():
        value = value.full_tensor() if hasattr(value, "full_tensor") else value  # a collective: every rank
        if keep:
            full[name] = value.cpu()
    return full


_END = object()


def lockstep(batches: Iterable[Any], device: torch.device) -> Iterator[tuple[Any, bool]]:
    """Yield ``(batch, counted)`` so that every rank runs as many forward passes (each gathers parameters).

    Evaluation shards give ranks unequal numbers of batches; a rank whose batches ran out repeats
    its last one, not counted, until every rank's have. One all-reduce of a flag per batch.

    Raises:
        DataError: a rank with no batch at all while others have some.
    """
    iterator, last = iter(batches), None
    while True:
        batch = next(iterator, _END)
        flags = torch.tensor([float(batch is not _END), float(batch is _END and last is None)], device=device)
        more, starved = distributed.all_reduce_max(flags).tolist()  # the same answer on every rank: none hangs
        if not more:
            return
        if starved:
            raise DataError("under strategy='fsdp' every rank runs each forward pass, but a rank has no evaluation "
                            "batch while others have some: give the loader at least one batch per process")
        if batch is _END:
            yield last, False
        else:
            last = batch
            yield batch, True
