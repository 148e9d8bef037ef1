"""Load pretrained weights into a model: strip wrapper prefixes, skip a resized head, refuse gaps in the backbone."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from warmstart.checkpoint import describe_compressed, load_weights
from warmstart.errors import CheckpointError, ConfigError
from warmstart.heads import find_head

WRAPPER_PREFIXES = ("module.", "_orig_mod.")


@dataclasses.dataclass
class LoadReport:
    """What :func:`load_pretrained` did with each weight.

    Attributes:
        source: where the weights came from.
        loaded: model keys filled from the weights.
        head_skipped: ``(key, weights shape, model shape)`` of head entries left at their new values.
        head_missing: head keys the weights do not have (a new head).
        unexpected: keys of the weights the model does not have (ignored).
        renamed: ``(old, new)`` keys whose wrapper prefixes were removed.
        metadata: the metadata stored with the weights (number of classes, head, config).
    """

    source: str
    loaded: list[str]
    head_skipped: list[tuple[str, tuple[int, ...], tuple[int, ...]]]
    head_missing: list[str]
    unexpected: list[str]
    renamed: list[tuple[str, str]]
    metadata: dict[str, Any]

    def __str__(self) -> str:
        rows = [f"load_pretrained from {self.source}",
                f"  loaded        {len(self.loaded)} tensors"]
        if self.head_skipped:
            rows.append("  head skipped  " + ", ".join(f"{k} {tuple(a)} -> {tuple(b)}" for k, a, b in self.head_skipped))
        if self.head_missing:
            rows.append("  head new      " + ", ".join(self.head_missing))
        if self.renamed:
            prefixes = sorted({old[: len(old) - len(new)] for old, new in self.renamed})
            rows.append(f"  renamed       {len(self.renamed)} keys (removed prefix {', '.join(repr(p) for p in prefixes)})")
        rows.append(f"  unexpected    {len(self.unexpected)}" + (f": {_shorten(self.unexpected)}" if self.unexpected else ""))
        rows.append("  missing       0 (every backbone weight was loaded)")
        return "\n".join(rows)


def _shorten(names: list[str], limit: int = 6) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def strip_prefixes(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[tuple[str, str]]]:
    """Remove DDP (``module.``) and ``torch.compile`` (``_orig_mod.``) prefixes from the keys."""
    out, renamed = {}, []
    for key, value in state_dict.items():
        new = key
        while new.startswith(WRAPPER_PREFIXES):
            new = new.split(".", 1)[1]
        out[new] = value
        if new != key:
            renamed.append((key, new))
    return out, renamed


def load_pretrained(model: nn.Module, source: str | os.PathLike | Mapping[str, Any], head: str | None = None,
                    allow_missing: tuple[str, ...] = (), ignore_unexpected: bool = False) -> LoadReport:
    """Load pretrained weights into ``model``, keeping its (possibly new) head.

    Accepts a state dict, a ``.safetensors`` file, a ``.pt``/``.pth`` file (read with
    ``weights_only=True``) or a warmstart checkpoint. Wrapper prefixes (``module.``,
    ``_orig_mod.``) are stripped. Head entries whose shape differs (another class count) are
    skipped; every other model weight must be present with the same shape: there is no silent
    ``strict=False``. Weights the model has no place for are an error too (they mean another
    architecture), except those of the old head (named in the file's metadata).

    Args:
        model: the model to fill, usually after :func:`swap_head`.
        source: the weights.
        head: the model's head module path (found automatically when omitted).
        allow_missing: key prefixes that may be absent (e.g. layers you added).
        ignore_unexpected: accept weights the model has no place for (reported, not loaded).

    Returns:
        A :class:`LoadReport`; ``print(report)`` shows a short table.

    Raises:
        CheckpointError: backbone weights are missing, have other shapes or have no place in the
            model (the keys are listed), the file is not a readable weight file, or it is a LoRA
            adapter (use :func:`warmstart.finetune.load_adapter`) or a compressed model (use
            :func:`warmstart.compress.load_compressed`).

    Examples:
        >>> from torchvision.models import resnet18
        >>> pretrained = resnet18(num_classes=10).state_dict()
        >>> model = resnet18(num_classes=7)
        >>> report = load_pretrained(model, pretrained)
        >>> len(report.loaded), [k for k, _, _ in report.head_skipped]
        (120, ['fc.weight', 'fc.bias'])
    """
    tensors, metadata = load_weights(source)
    if isinstance(metadata.get("lora"), dict):
        raise CheckpointError(f"'{_name(source)}' is a LoRA adapter (adapters and head, without the base model's "
                              "weights): load it onto its base model with warmstart.finetune.load_adapter(model, path)")
    compressed = describe_compressed(metadata)
    if compressed is not None:
        raise CheckpointError(f"'{_name(source)}': {compressed}, not with load_pretrained (its shapes or int8 "
                              "tensors do not fit a float model of the original architecture)")
    tensors, renamed = strip_prefixes(tensors)
    try:
        info = find_head(model, head)
        head_prefixes = [info.name, *info.extra]
    except ConfigError:
        if head is not None:
            raise
        head_prefixes = []  # no head to protect: every key must match

    def is_head(key: str) -> bool:
        return any(key == p or key.startswith(p + ".") for p in head_prefixes)

    own = model.state_dict()
    loaded, head_skipped, head_missing, problems = [], [], [], []
    for key, target in own.items():
        if key in tensors:
            if tensors[key].shape == target.shape:
                loaded.append(key)
            elif is_head(key):
                head_skipped.append((key, tuple(tensors[key].shape), tuple(target.shape)))
            else:
                problems.append(f"{key}: weights {tuple(tensors[key].shape)} vs model {tuple(target.shape)}")
        elif is_head(key):
            head_missing.append(key)
        elif not key.endswith("num_batches_tracked") and not key.startswith(tuple(allow_missing)):
            problems.append(f"{key}: missing from the weights")
    unexpected = [k for k in tensors if k not in own]
    old_head = metadata.get("head")
    if not ignore_unexpected:
        problems += [f"{k}: not in the model" for k in unexpected if not k.endswith("num_batches_tracked")
                     and not is_head(k) and not (old_head and (k == old_head or k.startswith(old_head + ".")))]
    if problems:
        raise CheckpointError(
            f"cannot load '{_name(source)}' into {type(model).__name__}: {len(problems)} backbone weights do not "
            f"fit ({_shorten(problems, 8)}). The weights come from another architecture or a changed model; "
            "build the model the weights were saved from, or pass allow_missing= for layers you added "
            "(ignore_unexpected=True for weights you do not need).")
    model.load_state_dict({k: tensors[k] for k in loaded}, strict=False)
    return LoadReport(source=_name(source), loaded=loaded, head_skipped=head_skipped, head_missing=head_missing,
                      unexpected=unexpected, renamed=renamed, metadata=metadata)


def _name(source: Any) -> str:
    return "a state dict" if isinstance(source, Mapping) else str(source)
