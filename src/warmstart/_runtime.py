"""Device choice, mixed precision, seeding, RNG snapshots and moving batches to the device."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from warmstart.errors import ConfigError

PRECISIONS = ("32", "bf16", "16")


def select_device(device: str | torch.device = "auto") -> torch.device:
    """Resolve ``"auto"`` to cuda, then mps, then cpu; pass anything else to ``torch.device``.

    Under ``torchrun`` each process takes the GPU of its ``LOCAL_RANK``.
    """
    if str(device) != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def check_precision(precision: str | int, device: torch.device) -> str:
    """Validate ``precision`` for ``device`` and return it as one of ``"32"``, ``"bf16"``, ``"16"``."""
    precision = str(precision)
    aliases = {"fp32": "32", "32-true": "32", "bf16-mixed": "bf16", "fp16": "16", "16-mixed": "16"}
    precision = aliases.get(precision, precision)
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision '{precision}'; use one of '32', 'bf16' (bfloat16 autocast) or '16' (float16 autocast with loss scaling)")
    if precision == "16" and device.type == "cpu":
        raise ConfigError("precision='16' (float16 with a GradScaler) needs a GPU; on the CPU use precision='bf16', which needs no loss scaling")
    return precision


def autocast_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Return the autocast context for ``precision`` (a no-op context for full precision)."""
    if precision == "32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and every CUDA device) random generators.

    Example:
        >>> seed_everything(0)
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Snapshot every RNG this process uses, as tensors and plain values (safe to ``torch.load``)."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore a snapshot taken by :func:`rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def move_to_device(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    """Move every tensor in a (nested) batch to ``device`` without blocking the host.

    With ``channels_last``, 4-D floating tensors (images) are laid out NHWC as well.
    """
    kind = type(batch)
    if kind is tuple or kind is list:  # the common case first: exact types skip the ABC checks below
        return kind(move_to_device(v, device, channels_last) for v in batch)
    if isinstance(batch, torch.Tensor):
        if channels_last and batch.dim() == 4 and batch.is_floating_point():
            return batch.to(device, non_blocking=True, memory_format=torch.channels_last)
        return batch.to(device, non_blocking=True)
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return kind(*(move_to_device(v, device, channels_last) for v in batch))
    if isinstance(batch, (list, tuple)):
        return kind(move_to_device(v, device, channels_last) for v in batch)
    if isinstance(batch, Mapping):
        return kind({k: move_to_device(v, device, channels_last) for k, v in batch.items()})
    return batch


def batch_size_of(batch: Any) -> int:
    """Return the number of samples in a batch: the first dimension of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.dim() else 1
    if type(batch) is not tuple and type(batch) is not list and isinstance(batch, Mapping):
        batch = list(batch.values())
    for item in batch:
        if isinstance(item, torch.Tensor) and item.dim():
            return item.shape[0]
    return 1
