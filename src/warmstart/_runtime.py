"""Device choice, mixed precision, seeding, RNG snapshots and moving batches to the device."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from warmstart.config import normalize_precision
from warmstart.errors import ConfigError

NO_CONTEXT = contextlib.nullcontext()  # reusable: the hot loop enters it every step without building a new one

def select_device(device: str | torch.device = "auto") -> torch.device:
    """Resolve ``"auto"`` to cuda, then mps, then cpu; check any other name is a device this machine has.

    Under ``torchrun`` each process takes the GPU of its ``LOCAL_RANK``.

    Raises:
        ConfigError: an unknown device name, or a CUDA/MPS device this machine does not have.
    """
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {str(device)!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {str(device)!r} asks for a CUDA GPU, but torch sees none (torch {torch.__version__}, "
                          "built for CUDA: " + str(torch.version.cuda) + "); use device='auto' or 'cpu'")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise ConfigError(f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if resolved.type == "mps" and not _mps_available():
        raise ConfigError(f"device {str(device)!r} asks for Apple's MPS, which is not available here; use 'auto' or 'cpu'")
    return resolved


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def check_precision(precision: str | int, device: torch.device) -> str:
    """Validate ``precision`` for ``device`` and return it as one of ``"32"``, ``"bf16"``, ``"16"``."""
    precision = normalize_precision(precision)
    if precision == "16" and device.type == "cpu":
        raise ConfigError("precision='16' (float16 with a GradScaler) needs a GPU; on the CPU use precision='bf16', which needs no loss scaling")
    return precision


def autocast_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Return the autocast context for ``precision`` (a no-op context for full precision)."""
    if precision == "32":
        return NO_CONTEXT
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and every CUDA device) random generators.

    Examples:
        >>> seed_everything(0)
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(generators: Sequence[torch.Generator] = ()) -> dict[str, Any]:
    """Snapshot every RNG this process uses, as tensors and plain values (safe to ``torch.load``).

    Args:
        generators: private generators to include, e.g. a ``DataLoader``'s ``generator`` (its
            shuffling order comes from it, not from the global RNG).
    """
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
        "generators": [g.get_state() for g in generators],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any], generators: Sequence[torch.Generator] = ()) -> bool:
    """Restore a snapshot taken by :func:`rng_state`.

    Returns:
        False when ``generators`` do not match the snapshot's in number (they are then left as they are).
    """
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    saved = state.get("generators", [])
    if len(saved) != len(generators):
        return False
    for generator, generator_state in zip(generators, saved):
        generator.set_state(generator_state)
    return True


def grad_accumulators(params: Iterable[torch.Tensor]) -> list[Any]:
    """The autograd nodes that add up the gradients of the trainable tensors in ``params``, for the caller to hold.

    A parameter's accumulator lives only while a graph refers to it. A loop that keeps nothing of a step's graph
    (the Trainer keeps only the detached loss) would destroy the accumulators after every backward and build them
    again in the next forward (about 4,000 instructions a step for the four parameters of ``bench/``'s MLP, a plain
    loop's graph living on to the next step keeps them). Holding them, as DDP does, builds them once; a hook
    registered on one then keeps firing. Tensor subclasses (FSDP's sharded ``DTensor`` parameters) are left alone.

    Examples:
        >>> nodes = grad_accumulators(torch.nn.Linear(2, 2).parameters())
        >>> [type(node).__name__ for node in nodes]
        ['AccumulateGrad', 'AccumulateGrad']
    """
    params = [p for p in params if p.requires_grad and type(p) in (torch.nn.Parameter, torch.Tensor)]
    with torch.enable_grad():
        return [p.view_as(p).grad_fn.next_functions[0][0] for p in params]


_CPU = torch.device("cpu")


def device_type_of(tensor: torch.Tensor) -> str:
    """``tensor.device.type``, without building the device and formatting its name for a CPU tensor (per step).

    Examples:
        >>> device_type_of(torch.zeros(1))
        'cpu'
    """
    return "cpu" if tensor.is_cpu else tensor.device.type


def move_to_device(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    """Move every tensor in a (nested) batch to ``device`` without blocking the host.

    With ``channels_last``, 4-D floating tensors (images) are laid out NHWC as well.
    """
    kind = type(batch)
    if kind is tuple or kind is list:  # the common case first: exact types skip the ABC checks below
        if not channels_last and device == _CPU:  # a CPU run's batch of CPU tensors stays as it is
            for item in batch:
                if type(item) is not torch.Tensor or not item.is_cpu:
                    break
            else:
                return batch if kind is tuple else list(batch)  # a new list: the step may change it, not the loader's
        return kind([move_to_device(v, device, channels_last) for v in batch])
    if isinstance(batch, torch.Tensor):
        if channels_last and batch.dim() == 4 and batch.is_floating_point():
            return batch.to(device, non_blocking=True, memory_format=torch.channels_last)
        # a tensor already there is handed back as it is (is_cpu is cheaper than building its device to compare,
        # and comparing devices cheaper than reading device.type, which formats a string)
        if batch.is_cpu if device == _CPU else batch.device == device:
            return batch
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


def describe_callable(fn: Any) -> str:
    """A loss function as the saved config names it, settings included, so a changed one shows at resume.

    Examples:
        >>> describe_callable(torch.nn.functional.cross_entropy)
        'torch.nn.functional.cross_entropy'
        >>> describe_callable(torch.nn.CrossEntropyLoss(label_smoothing=0.1))
        "torch.nn.modules.loss.CrossEntropyLoss(ignore_index=-100, label_smoothing=0.1, reduction='mean')"
    """
    import functools

    if isinstance(fn, functools.partial):
        args = [repr(a) for a in fn.args] + [f"{k}={v!r}" for k, v in sorted(fn.keywords.items())]
        return f"{describe_callable(fn.func)}({', '.join(args)})"
    kind = fn if isinstance(fn, type) or callable(fn) and hasattr(fn, "__qualname__") else type(fn)
    name = f"{getattr(kind, '__module__', '')}.{getattr(kind, '__qualname__', type(fn).__name__)}"
    if isinstance(fn, torch.nn.Module):  # its plain settings (label_smoothing, reduction, ...)
        settings = {k: v for k, v in vars(fn).items() if not k.startswith("_") and k != "training"
                    and isinstance(v, (bool, int, float, str, type(None)))}
        return name + "(" + ", ".join(f"{k}={v!r}" for k, v in sorted(settings.items())) + ")"
    return name


def plain_values(obj: Any) -> Any:
    """Keep only what ``torch.load(weights_only=True)`` and JSON can hold."""
    if isinstance(obj, Mapping):
        return {str(k): plain_values(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain_values(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)
