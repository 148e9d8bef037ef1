"""Inference latency: the median wall-clock time of a forward pass, GPU work included."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_of(model: nn.Module) -> torch.device:
    tensor = next(iter(model.parameters()), None)
    if tensor is None:
        tensor = next(iter(model.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def measure_latency(model: nn.Module, example_input: torch.Tensor | tuple[torch.Tensor, ...], *,
                    repeats: int = 20, warmup: int = 3) -> float:
    """Median seconds of one forward pass of ``model`` in eval mode under ``no_grad``.

    The first ``warmup`` calls are not timed (they include any ``torch.compile`` compilation and
    allocator warm-up). On a shared machine, take the median of several runs and say so.

    Args:
        model: the network (its train/eval mode is restored afterwards).
        example_input: a batch, or a tuple of positional inputs.
        repeats: timed calls.
        warmup: untimed calls first.

    Examples:
        >>> seconds = measure_latency(nn.Linear(8, 2), torch.randn(4, 8), repeats=5)
    """
    inputs = tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)
    device, was_training = _device_of(model), model.training
    model.eval()
    times = []
    with torch.no_grad():
        for call in range(warmup + repeats):
            _synchronize(device)
            start = time.perf_counter()
            model(*inputs)
            _synchronize(device)
            if call >= warmup:
                times.append(time.perf_counter() - start)
    model.train(was_training)
    return statistics.median(times)
