"""What a batch holds: inputs and targets by position or key, and per-batch evaluation sums."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from warmstart.errors import DataError

Batch = Any

INPUT_KEYS = ("input", "inputs", "x", "image", "features")
TARGET_KEYS = ("target", "targets", "label", "labels", "y")


def split_batch(batch: Batch, require_target: bool = True) -> tuple[Any, Any]:
    """Return ``(inputs, target)`` from a ``(x, y, ...)`` sequence or a dict with ``input``/``target`` keys.

    Args:
        batch: the batch.
        require_target: with ``False``, an unlabelled batch (``(x,)``, or a dict without a target
            key) gives ``(inputs, None)`` instead of an error.

    Raises:
        DataError: the batch has no recognisable inputs, or no target when one is required.

    Example:
        >>> split_batch({"input": 1, "label": 2})
        (1, 2)
    """
    inputs = target = None
    if isinstance(batch, Mapping):
        inputs = next((batch[k] for k in INPUT_KEYS if k in batch), None)
        target = target_of(batch)
    elif isinstance(batch, (list, tuple)) and batch:
        inputs, target = batch[0], target_of(batch)
    if inputs is not None and (target is not None or not require_target):
        return inputs, target
    raise DataError("the default compute_loss expects batches of (inputs, target, ...) or dicts with 'input' and "
                    f"'target' keys, got {type(batch).__name__}; override compute_loss for other batch formats")


def target_of(batch: Batch) -> Any:
    """The batch's targets: ``batch[1]``, or a dict's ``target``/``labels``/... entry (``None`` if absent)."""
    if isinstance(batch, Mapping):
        return next((batch[k] for k in TARGET_KEYS if k in batch), None)
    if isinstance(batch, (list, tuple)) and len(batch) >= 2:
        return batch[1]
    return None


def is_classification(output: Any, target: Any) -> bool:
    """True for ``(B, C)`` floating scores and ``(B,)`` integer class indices."""
    return (isinstance(output, torch.Tensor) and isinstance(target, torch.Tensor) and output.dim() == 2
            and output.is_floating_point() and target.dim() == 1 and not target.is_floating_point()
            and output.shape[0] == target.shape[0])


def classification_sums(output: Any, target: Any, terms: Mapping[str, torch.Tensor], device: torch.device,
                        n: int | None = None) -> dict[str, torch.Tensor]:
    """Per-batch sums for evaluation: each term times the batch size, correct predictions, non-finite rows, ``count``.

    Accuracy is counted when ``output`` is ``(B, C)`` scores and ``target`` is ``(B,)`` class
    indices; ``nonfinite`` counts samples whose scores hold a NaN or inf (their argmax means nothing).
    """
    n = n if n is not None else len(target)
    sums = {name: value.detach().float() * n for name, value in terms.items()}
    if is_classification(output, target):
        sums["accuracy"] = (output.argmax(dim=-1) == target).sum().float()
        sums["nonfinite"] = (~torch.isfinite(output.detach())).any(dim=-1).sum().float()
    sums["count"] = torch.tensor(float(n), device=device)
    return sums
