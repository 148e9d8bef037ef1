"""How a model runs: one object per way (one device, DDP, FSDP), owning everything the training loop must not branch on.

Each strategy owns wrapping the model, skipping the gradient sync on accumulation micro-batches,
the evaluation batches, buffer synchronisation, gradient clipping, gathering full weights, and the
kind of resume checkpoint it writes (``last.pt`` or the sharded folder ``last.dcp``). The Trainer
calls these methods and never asks which strategy it holds.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from warmstart._runtime import NO_CONTEXT
from warmstart.checkpoint import load_checkpoint, save_checkpoint
from warmstart.config import TrainerConfig
from warmstart.distributed import _fsdp
from warmstart.distributed import _process_group as pg
from warmstart.distributed._sharded_checkpoint import (find_sharded_checkpoint, is_sharded_checkpoint,
                                                       load_sharded_checkpoint, save_sharded_checkpoint)
from warmstart.errors import CheckpointError

WHOLE_CHECKPOINT, SHARDED_CHECKPOINT = "last.pt", "last.dcp"


class Strategy:
    """One process holding the whole model (also the base of the others).

    Attributes:
        device: where the model runs.
        checkpoint_name: the resume checkpoint this strategy writes in ``out_dir``.
    """

    checkpoint_name = WHOLE_CHECKPOINT

    def __init__(self, device: torch.device):
        self.device = device

    def prepare(self, model: nn.Module, config: TrainerConfig, precision: str, optimizer: Any = None) -> None:
        """Change the model in place before its optimizer is built (activation checkpointing, sharding)."""
        if config.activation_checkpointing:
            _fsdp.checkpoint_blocks(model, config)

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module a training forward pass calls (DDP wraps here)."""
        return model

    def no_sync(self, model: nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
        """Skip the gradient sync on a micro-batch that does not end an accumulation window (``enabled``)."""
        return NO_CONTEXT

    def evaluation_batches(self, loader: Iterable[Any]) -> Iterator[tuple[Any, bool]]:
        """``(batch, counted)`` pairs: every rank runs as many forward passes as the strategy needs."""
        return ((batch, True) for batch in loader)

    def reshard(self, model: nn.Module) -> None:
        """Make the registered parameters what the optimizer holds again (FSDP: the shards, after a forward
        without backward left them gathered); call before state dicts and after evaluation."""

    def sync_buffers(self, model: nn.Module) -> None:
        """Make the model's floating-point buffers (BatchNorm statistics) the same on every rank: their mean.

        Each rank updates them from its own batches, so without this the validation and the saved
        weights would be rank 0's statistics (or a mix of every rank's). A no-op in one process.
        """
        if not pg.is_distributed():
            return
        buffers = [b for b in model.buffers() if torch.is_floating_point(b)]
        if buffers:
            flat = torch.cat([b.detach().reshape(-1).float() for b in buffers])
            pg.all_reduce_sum(flat).div_(pg.world_size())
            torch._foreach_copy_(buffers, [part.view_as(b).to(b.dtype)
                                           for part, b in zip(flat.split([b.numel() for b in buffers]), buffers)])

    def clip_grad_norm(self, parameters: list[torch.Tensor], max_norm: float) -> None:
        """Clip the gradients of ``parameters`` to a total norm of ``max_norm``."""
        torch.nn.utils.clip_grad_norm_(parameters, max_norm, foreach=True)

    def writes_checkpoint(self) -> bool:
        """True on the ranks that write the resume checkpoint (rank 0; every rank for sharded folders)."""
        return pg.is_main_process()

    def save_checkpoint(self, model: nn.Module, path: Path, state: Mapping[str, Any]) -> Path:
        """Write a resume checkpoint (``state`` as :meth:`Trainer.checkpoint_state` builds it)."""
        return save_checkpoint(path, state)

    def load_checkpoint(self, model: nn.Module, path: Path) -> dict[str, Any]:
        """Read a resume checkpoint of either kind (a sharded folder is read whole)."""
        if is_sharded_checkpoint(path) or path.is_dir():
            return load_sharded_checkpoint(path, model, self.device)
        return load_checkpoint(path, map_location=self.device)

    def full_state_dict(self, model: nn.Module, state_dict: Mapping[str, torch.Tensor] | None = None
                        ) -> dict[str, torch.Tensor]:
        """The whole weights on rank 0 (``state_dict``, or the model's); every rank must call it."""
        return dict(model.state_dict() if state_dict is None else state_dict)

    def rewrap(self, model: nn.Module, wrapped: nn.Module) -> nn.Module:
        """The wrapper to use after the set of trainable parameters changed during fit."""
        return wrapped


class DDPStrategy(Strategy):
    """A full replica per ``torchrun`` process; gradients all-reduced by ``DistributedDataParallel``."""

    def __init__(self, device: torch.device):
        super().__init__(device)
        self.ddp: nn.parallel.DistributedDataParallel | None = None

    def wrap(self, model: nn.Module) -> nn.Module:
        if not pg.is_distributed():
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        self.ddp = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        return self.ddp

    def no_sync(self, model: nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
        return self.ddp.no_sync() if enabled and self.ddp is not None else NO_CONTEXT

    def rewrap(self, model: nn.Module, wrapped: nn.Module) -> nn.Module:
        return self.wrap(model) if self.ddp is not None else wrapped


class FSDPStrategy(Strategy):
    """Parameters, gradients and optimizer state sharded over the processes (FSDP2), sharded checkpoints.

    The model is sharded in place block by block when the Trainer is built; evaluation runs in
    lockstep (every forward gathers parameters from every rank); ``last.dcp`` resumes at any number
    of processes and ``last.safetensors`` is gathered on rank 0.
    """

    checkpoint_name = SHARDED_CHECKPOINT

    def prepare(self, model: nn.Module, config: TrainerConfig, precision: str, optimizer: Any = None) -> None:
        super().prepare(model, config, precision, optimizer)
        _fsdp.shard(model, config, precision, self.device, optimizer)

    def no_sync(self, model: nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
        return _fsdp.no_gradient_sync(model, enabled)

    def evaluation_batches(self, loader: Iterable[Any]) -> Iterator[tuple[Any, bool]]:
        return _fsdp.lockstep(loader, self.device)

    def reshard(self, model: nn.Module) -> None:
        _fsdp.reshard(model)  # a forward without backward leaves the root's parameters gathered

    def sync_buffers(self, model: nn.Module) -> None:
        _fsdp.reshard(model)
        super().sync_buffers(model)  # FSDP2 shards parameters only: buffers are per-rank copies

    def clip_grad_norm(self, parameters: list[torch.Tensor], max_norm: float) -> None:
        _fsdp.clip_grad_norm(parameters, max_norm)

    def writes_checkpoint(self) -> bool:
        return True

    def save_checkpoint(self, model: nn.Module, path: Path, state: Mapping[str, Any]) -> Path:
        return save_sharded_checkpoint(path, state)

    def load_checkpoint(self, model: nn.Module, path: Path) -> dict[str, Any]:
        if path.is_file():
            raise CheckpointError(f"'{path}' is a whole-model checkpoint, which strategy='fsdp' cannot resume (it "
                                  "continues sharded folders such as last.dcp); resume it without FSDP, or start a "
                                  "new run from its weights (warmstart.finetune.load_pretrained before the Trainer)")
        return load_sharded_checkpoint(path, model, self.device)

    def full_state_dict(self, model: nn.Module, state_dict: Mapping[str, torch.Tensor] | None = None
                        ) -> dict[str, torch.Tensor]:
        return _fsdp.gather_state_dict(model, state_dict)


def build_strategy(name: str, device: torch.device) -> Strategy:
    """The strategy object for ``TrainerConfig.strategy`` (``"auto"`` and ``"ddp"``: DDP under ``torchrun``)."""
    return FSDPStrategy(device) if name == "fsdp" else DDPStrategy(device)


def find_last_checkpoint(out_dir: Path) -> Path | None:
    """The newest resume checkpoint in ``out_dir``, of either kind (``last.pt`` or ``last.dcp``), or ``None``.

    Raises:
        CheckpointError: a ``last.dcp`` folder that is incomplete (no ``.metadata`` or ``trainer.pt``)
            and has no complete previous copy: resuming must not start afresh over it.
    """
    whole = out_dir / WHOLE_CHECKPOINT
    sharded_folder = out_dir / SHARDED_CHECKPOINT
    sharded = find_sharded_checkpoint(sharded_folder)
    if sharded is None and sharded_folder.exists():
        raise CheckpointError(f"'{sharded_folder}' is not a complete sharded checkpoint (it needs trainer.pt and DCP's "
                              ".metadata; a write was cut short or files were removed). Resume from another "
                              "checkpoint with fit(..., resume=PATH), or move the folder away to start afresh.")
    candidates = [p for p in (whole if whole.is_file() else None, sharded) if p is not None]
    if not candidates:
        return None
    return max(candidates, key=_written_at)


def _written_at(path: Path) -> float:
    return os.stat(path / "trainer.pt" if path.is_dir() else path).st_mtime_ns
