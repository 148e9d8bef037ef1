"""Unstructured sparsity with torch.nn.utils.prune: zero the smallest weights across the whole model."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence

from torch import nn
from torch.nn.utils import prune as torch_prune

from warmstart.compress._layers import add_to_record, module_names, refuse_quantized
from warmstart.errors import ConfigError

_SPARSE_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)


@dataclasses.dataclass
class SparsityReport:
    """What :func:`sparsify` did.

    Attributes:
        amount: the share of weights asked to be zeroed.
        sparsity: the share of zeros over all the weights considered.
        zeros: zeroed weights.
        weights: weights considered (those of every Linear and convolution not ignored).
        layers: ``{name: share of zeros}`` per layer (a global ranking zeroes layers unequally).
        masks_kept: whether the masks stay attached (see :func:`remove_masks`).
    """

    amount: float
    sparsity: float
    zeros: int
    weights: int
    layers: dict[str, float]
    masks_kept: bool

    def __str__(self) -> str:
        rows = [f"sparsity {self.sparsity:.1%} ({self.zeros:,} of {self.weights:,} weights are zero; asked "
                f"{self.amount:.1%}){'; masks kept' if self.masks_kept else ''}"]
        rows += [f"  {name:<24} {share:6.1%}" for name, share in self.layers.items()]
        return "\n".join(rows)


def sparsify(model: nn.Module, amount: float = 0.5, *, ignore: Sequence[str | nn.Module] = (),
             global_pruning: bool = True, keep_masks: bool = False) -> tuple[nn.Module, SparsityReport]:
    """Zero the ``amount`` smallest-magnitude weights of the Linear and conv layers of a copy of ``model``.

    By default the ranking is global (``torch.nn.utils.prune.global_unstructured`` with L1), so
    layers lose different shares, and a layer of small weights can lose nearly all of them (see
    ``report.layers``); ``global_pruning=False`` zeroes the same share in every layer.

    The tensors keep their dense shapes, so dense kernels run exactly as fast as before. What
    sparsity buys is size on disk (:func:`warmstart.compress.save_compressed` stores a sparse
    tensor as a bit mask plus its non-zero values: ``1/32 + (1 - sparsity)`` of the float32
    size) and a measure of how many weights the accuracy needs. Speed comes from structured
    pruning (:func:`warmstart.compress.prune`) or int8 (:func:`warmstart.compress.quantize`).

    Args:
        model: the network (left unchanged: a deep copy is sparsified).
        amount: share of the weights to zero, in (0, 1).
        ignore: modules, or their names, whose weights stay dense.
        global_pruning: rank all weights together (default) rather than layer by layer.
        keep_masks: keep torch's pruning masks attached, so fine-tuning (e.g.
            :func:`warmstart.compress.recover`) keeps the zeros at zero; call
            :func:`remove_masks` afterwards. Without it the zeros are made permanent at once
            (and training would let them grow back).

    Returns:
        ``(sparse model, SparsityReport)``.

    Raises:
        ConfigError: ``amount`` outside (0, 1), an ``ignore`` entry not in the model, or no
            Linear or convolution left to sparsify.

    Examples:
        >>> from warmstart.models import mlp
        >>> sparse, report = sparsify(mlp(784, [64], 10), amount=0.8)
        >>> round(report.sparsity, 2)
        0.8
    """
    if isinstance(amount, bool) or not isinstance(amount, (int, float)):
        raise ConfigError(f"amount is the share of weights to zero, a number in (0, 1); got {amount!r} (a "
                          f"{type(amount).__name__}), e.g. amount=0.5")
    if not 0 < amount < 1:
        raise ConfigError(f"amount is the share of weights to zero and must be in (0, 1), got {amount}")
    refuse_quantized(model, "sparsify", "Sparsify the float model, then quantize the sparse model.")
    ignored = module_names(model, ignore, "ignore")
    sparse = copy.deepcopy(model)
    layers = {name: m for name, m in sparse.named_modules()
              if isinstance(m, _SPARSE_LAYERS) and not any(name == k or name.startswith(f"{k}.") for k in ignored)}
    if not layers:
        raise ConfigError(f"{type(model).__name__} has no Linear or convolution weights to sparsify outside "
                          f"the ignored modules ({', '.join(ignored) or 'none'})")
    if global_pruning:
        torch_prune.global_unstructured([(m, "weight") for m in layers.values()],
                                        pruning_method=torch_prune.L1Unstructured, amount=amount)
    else:
        for module in layers.values():
            torch_prune.l1_unstructured(module, "weight", amount=amount)
    if not keep_masks:
        remove_masks(sparse)
    report = _report(amount, layers, keep_masks)
    add_to_record(sparse, "sparsified", {"sparsity": report.sparsity})
    return sparse, report


def remove_masks(model: nn.Module) -> nn.Module:
    """Make torch pruning masks permanent, in place: ``weight = weight_orig * weight_mask``, masks dropped.

    Examples:
        >>> sparse, _ = sparsify(nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2)), 0.5, keep_masks=True)
        >>> sorted(name for name, _ in remove_masks(sparse).named_parameters())
        ['0.bias', '0.weight', '1.bias', '1.weight']
    """
    for module in model.modules():
        masked = [name[: -len("_mask")] for name, _ in module.named_buffers(recurse=False)
                  if name.endswith("_mask") and hasattr(module, name[: -len("_mask")] + "_orig")]
        for name in masked:
            torch_prune.remove(module, name)
    return model


def has_masks(model: nn.Module) -> bool:
    """Whether torch pruning masks are still attached (``*_orig`` parameters with ``*_mask`` buffers)."""
    return any(name.endswith("_orig") for name, _ in model.named_parameters())


def _report(amount: float, layers: dict[str, nn.Module], masks_kept: bool) -> SparsityReport:
    shares, zeros, total = {}, 0, 0
    for name, module in layers.items():
        weight = module.weight  # with masks kept, this is weight_orig * weight_mask
        layer_zeros = int((weight == 0).sum())
        shares[name] = layer_zeros / weight.numel()
        zeros, total = zeros + layer_zeros, total + weight.numel()
    return SparsityReport(amount, zeros / total, zeros, total, shares, masks_kept)
