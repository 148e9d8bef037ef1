"""What a batch holds: inputs and targets by position or key (tokenized text too), and per-batch evaluation sums."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from warmstart.errors import ConfigError, DataError

Batch = Any

INPUT_KEYS = ("input", "inputs", "x", "image", "features")
TARGET_KEYS = ("target", "targets", "label", "labels", "y")
# entries of a text batch that are not keyword arguments of the model
TEXT_EXTRA_KEYS = ("soft_labels", "index")


def split_batch(batch: Batch, require_target: bool = True) -> tuple[Any, Any]:
    """Return ``(inputs, target)`` from a ``(x, y, ...)`` sequence or a dict with ``input``/``target`` keys.

    Args:
        batch: the batch.
        require_target: with ``False``, an unlabelled batch (``(x,)``, or a dict without a target
            key) gives ``(inputs, None)`` instead of an error.

    Raises:
        DataError: the batch has no recognisable inputs, or no target when one is required.

    A batch of tokenized text (a dict with ``input_ids``) gives the model's keyword arguments as
    ``inputs``: every entry except the targets and ``soft_labels``; it must hold an ``attention_mask``.

    Examples:
        >>> split_batch({"input": 1, "label": 2})
        (1, 2)
    """
    inputs = target = None
    kind = type(batch)
    if kind is tuple or kind is list:  # the common case first: exact types skip the ABC checks below
        if batch:
            inputs, target = batch[0], (batch[1] if len(batch) >= 2 else None)
    elif is_text_batch(batch):
        inputs, target = text_inputs(batch), target_of(batch)
    elif isinstance(batch, Mapping):
        inputs = next((batch[k] for k in INPUT_KEYS if k in batch), None)
        target = target_of(batch)
    elif isinstance(batch, (list, tuple)) and batch:
        inputs, target = batch[0], target_of(batch)
    if inputs is not None and (target is not None or not require_target):
        return inputs, target
    raise DataError("the default compute_loss expects batches of (inputs, target, ...), dicts with 'input' and "
                    "'target' keys, or tokenized text (dicts with 'input_ids', 'attention_mask' and 'labels'), got "
                    f"{type(batch).__name__}; override compute_loss for other batch formats")


def is_text_batch(batch: Batch) -> bool:
    """True for a dict of tokenized text: ``input_ids`` (and ``attention_mask``, labels, ...)."""
    return isinstance(batch, Mapping) and "input_ids" in batch


def text_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of a text model: a text batch without its targets and ``soft_labels``.

    Raises:
        DataError: the batch has no ``attention_mask`` (padding would be attended to as if it were text).
    """
    if "attention_mask" not in batch:
        raise DataError("a text batch has input_ids but no attention_mask, so the model would attend to the padding "
                        "as if it were text; build batches with warmstart.data.text_loader (it pads each batch and "
                        "adds the mask), or add attention_mask = (input_ids != pad_token_id).long()")
    return {k: v for k, v in batch.items() if k not in TARGET_KEYS and k not in TEXT_EXTRA_KEYS}


def run_model(model: Any, inputs: Any) -> Any:
    """Call ``model`` on a batch's inputs: ``model(**inputs)`` for text, else ``model(inputs)``.

    A Hugging Face output object gives its ``.logits``, so losses and accuracy see a plain tensor.

    Examples:
        >>> run_model(torch.nn.Identity(), torch.ones(2))
        tensor([1., 1.])
    """
    output = model(inputs) if isinstance(inputs, torch.Tensor) or not isinstance(inputs, Mapping) else model(**inputs)
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)  # transformers' ModelOutput; a tensor has no such attribute
    return output if logits is None else logits


def target_of(batch: Batch) -> Any:
    """The batch's targets: ``batch[1]``, or a dict's ``target``/``labels``/... entry (``None`` if absent)."""
    kind = type(batch)
    if kind is tuple or kind is list:  # the common case first
        return batch[1] if len(batch) >= 2 else None
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


# losses that compare outputs and targets element by element, broadcasting shapes that differ: (B, 1) against (B,)
# becomes a (B, B) comparison that trains every output toward the batch mean, with only a torch warning
_ELEMENTWISE = (F.mse_loss, F.l1_loss, F.smooth_l1_loss, F.huber_loss)
_ELEMENTWISE_MODULES = (nn.MSELoss, nn.L1Loss, nn.SmoothL1Loss, nn.HuberLoss)


def is_elementwise_loss(loss_fn: Any) -> bool:
    """True for torch's element-wise regression losses (``mse_loss``, ``l1_loss``, ... and their modules)."""
    return loss_fn in _ELEMENTWISE or isinstance(loss_fn, _ELEMENTWISE_MODULES)


def is_cross_entropy(loss_fn: Any) -> bool:
    """True for torch's cross-entropy: ``F.cross_entropy``, a ``functools.partial`` of it, or ``nn.CrossEntropyLoss``."""
    return loss_fn is F.cross_entropy or getattr(loss_fn, "func", None) is F.cross_entropy or \
        isinstance(loss_fn, nn.CrossEntropyLoss)


def check_one_class(output: Any) -> None:
    """Refuse a single output under cross-entropy: its softmax over one class is 1, so the loss is 0 and nothing trains.

    Raises:
        DataError: the model's outputs have one column (the message names the losses that fit).
    """
    if isinstance(output, torch.Tensor) and output.dim() >= 1 and output.shape[-1] == 1:
        raise DataError(f"the model has one output (shape {tuple(output.shape)}) and the loss is cross-entropy over "
                        "classes: a softmax over one class is always 1, so the loss is 0 and nothing would train. For "
                        "regression pass loss_fn=torch.nn.functional.mse_loss; for two classes give the model 2 "
                        "outputs, or pass loss_fn=torch.nn.functional.binary_cross_entropy_with_logits")


def check_regression_shapes(output: Any, target: Any) -> None:
    """Refuse outputs and targets of different shapes for an element-wise loss, which would broadcast them silently.

    Raises:
        DataError: the shapes differ (the message gives the reshape that fixes a ``(B, 1)`` / ``(B,)`` pair).
    """
    if not (isinstance(output, torch.Tensor) and isinstance(target, torch.Tensor)) or output.shape == target.shape:
        return
    out, tgt = tuple(output.shape), tuple(target.shape)
    if out[:-1] == tgt and out[-1] == 1:
        fix = "give the targets the outputs' shape (targets.unsqueeze(-1), or a data set of (N, 1) targets)"
    elif tgt[:-1] == out and tgt[-1] == 1:
        fix = "give the targets the outputs' shape (targets.squeeze(-1))"
    else:
        fix = "make the model's outputs and the targets the same shape"
    raise DataError(f"the model's outputs have shape {out} and the targets {tgt}: an element-wise loss such as "
                    "mse_loss broadcasts different shapes against each other (a (B, 1) output and (B,) targets become "
                    f"a (B, B) comparison) and trains toward the wrong values without an error: {fix}")


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


def set_loader_epoch(loader: Any, epoch: int) -> None:
    """Tell a loader, its sampler (DistributedSampler) and its data set (AugmentedViews) which epoch starts."""
    for part in (loader, getattr(loader, "sampler", None), getattr(loader, "dataset", None)):
        if hasattr(part, "set_epoch"):
            part.set_epoch(epoch)


def loader_length(loader: Any) -> int | None:
    """``len(loader)``, or ``None`` for an iterable without a length."""
    try:
        return len(loader)
    except TypeError:
        return None


def loss_terms(out: torch.Tensor | Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Normalise ``compute_loss``'s result to a dict of scalar tensors with ``"loss"`` first."""
    if isinstance(out, torch.Tensor):
        return {"loss": out}
    if not (type(out) is dict or isinstance(out, Mapping)) or "loss" not in out:
        raise ConfigError("compute_loss must return a loss tensor or a dict with a 'loss' entry")
    terms = {"loss": out["loss"]}
    for k, v in out.items():  # a loop, not a comprehension: no extra frame in the hot loop
        if k != "loss" and k != "output" and isinstance(v, torch.Tensor) and v.dim() == 0:
            terms[k] = v
    return terms
