"""Evaluation as a free function of (model, loader): no optimizer and no Trainer needed to measure a model."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from warmstart._batches import (Batch, check_one_class, check_regression_shapes, classification_sums,
                                is_classification, is_cross_entropy, is_elementwise_loss, run_model, split_batch,
                                target_of)
from warmstart._epoch import MetricWindow
from warmstart._runtime import autocast_context, batch_size_of, check_precision, move_to_device, select_device
from warmstart._threads import cpu_threads
from warmstart.config import normalize_precision
from warmstart.distributed import FSDPStrategy, Strategy, all_reduce_sum, is_distributed, shard_loader
from warmstart.distributed._fsdp import is_sharded
from warmstart.errors import DataError, NonFiniteLossError

__all__ = ["evaluate", "average_metrics"]


def evaluate(model: nn.Module, loader: Iterable[Batch], *, loss_fn: Callable[..., torch.Tensor] | None = None,
             device: str | torch.device | None = None, precision: str | int | None = None,
             threads: int | str | None = "auto") -> dict[str, float]:
    """Average the loss (and accuracy, for classifiers) of ``model`` over ``loader``.

    Works on any module that maps inputs to outputs: a frozen or int8 model, a Hugging Face model
    (its ``.logits``), a model sharded with FSDP. The model is put in eval mode for the pass and
    given back in the mode it had. Under ``torchrun`` each rank evaluates its share of the loader
    (every sample once) and the sums are combined, so every rank gets the same result.

    Args:
        model: the network.
        loader: batches as :class:`warmstart.Trainer` takes them (``(inputs, target)``, dicts, text).
        loss_fn: ``loss_fn(output, target)`` (default: cross-entropy).
        device: where to run, ``"auto"`` or a torch device (the model is moved there, as the Trainer
            does); default: where the model's parameters are, else the CPU.
        precision: ``"32"`` (default), ``"bf16"`` or ``"16"`` autocast.
        threads: intra-op CPU threads for the pass, as ``TrainerConfig.threads`` (``"auto"``, the
            default: the cores other work leaves free; ``None``: torch's setting; or a number).

    Returns:
        ``{"loss": ..., "accuracy": ...}``: means over the samples (accuracy for ``(B, C)`` outputs
        and ``(B,)`` class targets).

    Raises:
        DataError: an empty loader or labels outside the model's outputs.
        NonFiniteLossError: the model's outputs or loss hold NaN/inf.

    Examples:
        >>> model = nn.Linear(4, 3)
        >>> data = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))]
        >>> sorted(evaluate(model, data))
        ['accuracy', 'loss']
    """
    if device is not None:
        device = select_device(device)
        model.to(device)
    else:
        device = _device_of(model)
    precision = check_precision(normalize_precision(precision or "32"), device)
    loss_fn = loss_fn if loss_fn is not None else F.cross_entropy
    window = MetricWindow(device)
    elementwise, cross_entropy = is_elementwise_loss(loss_fn), is_cross_entropy(loss_fn)

    def step(batch: Batch) -> dict[str, torch.Tensor]:
        inputs, target = split_batch(batch)
        with autocast_context(precision, device):
            output = run_model(model, inputs)
            if is_classification(output, target):
                checked = window.check_labels(output, target)
            else:
                checked = target
                if elementwise:
                    check_regression_shapes(output, target)
                elif cross_entropy:
                    check_one_class(output)
            loss = loss_fn(output, checked)
        return classification_sums(output, target_of(batch), {"loss": loss}, device, batch_size_of(batch))

    strategy = FSDPStrategy(device) if is_sharded(model) else Strategy(device)
    with cpu_threads(threads, device):
        return average_metrics(model, shard_loader(loader, 0, train=False), step, strategy, verify=window.verify)


@torch.no_grad()
def average_metrics(model: nn.Module, loader: Iterable[Batch], step: Callable[[Batch], Mapping[str, torch.Tensor]],
                    strategy: Strategy, *, verify: Callable[[], None], channels_last: bool = False) -> dict[str, float]:
    """Sum ``step``'s per-batch sums over ``loader`` in eval mode, over every rank, and divide by ``count``.

    ``step(batch)`` returns sums of the metrics and ``count`` (and optionally ``nonfinite``) as
    tensors; they stay on the device until the one read at the end. The Trainer passes its
    ``validation_step`` and its strategy here.
    """
    was_training = model.training
    model.eval()
    totals: dict[str, torch.Tensor] = {}
    try:
        for batch, counted in strategy.evaluation_batches(loader):
            try:
                sums = step(move_to_device(batch, strategy.device, channels_last))
            except (IndexError, RuntimeError) as err:  # on the CPU a label out of range fails the loss itself
                if is_distributed():  # labels are clamped there, so this is another error; no rank reads alone
                    raise
                try:
                    verify()
                except DataError as failure:  # name it
                    raise failure from err
                raise
            for name, value in sums.items():
                if counted:
                    totals[name] = totals[name] + value if name in totals else value
    finally:
        model.train(was_training)
        strategy.reshard(model)
    verify()
    if not totals:
        raise DataError("the evaluation loader produced no batches; check that its dataset is not empty")
    names = list(totals)
    values = all_reduce_sum(torch.stack([totals[n].float().to(strategy.device) for n in names])).tolist()
    result = dict(zip(names, values))
    count, nonfinite = result.pop("count"), result.pop("nonfinite", 0.0)
    if nonfinite or not all(math.isfinite(v) for v in result.values()):
        raise NonFiniteLossError(f"evaluation: the model's outputs or loss are NaN/inf ({nonfinite:.0f} of {count:.0f} "
                                 "samples with non-finite outputs), so loss and accuracy would mean nothing. Check "
                                 "the inputs for NaN/inf and the weights for divergence.")
    return {name: value / count for name, value in result.items()}


def _device_of(model: nn.Module) -> torch.device:
    tensors: Iterator[Any] = iter([*model.parameters(), *model.buffers()])
    first = next(tensors, None)
    return first.device if first is not None else torch.device("cpu")
