"""Supervised pretraining output: weights plus the metadata ``warmstart.finetune`` needs to reuse them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from warmstart.checkpoint import COMPRESSION_ATTRIBUTE, save_weights
from warmstart.errors import ConfigError
from warmstart.heads import find_head


def save_pretrained(model: nn.Module, path: str | os.PathLike, head: str | None = None,
                    config: dict[str, Any] | None = None, **metadata: Any) -> Path:
    """Save a pretrained classifier as ``.safetensors`` with what finetune needs to reuse it.

    The metadata holds the model class, the head's module path and class count, and the config;
    ``warmstart.finetune.load_pretrained`` reads it to skip the old head. Every
    :class:`warmstart.Trainer` run with an ``out_dir`` already writes the same kind of file
    (``last.safetensors``, and ``best.safetensors`` with :class:`warmstart.BestCheckpoint`).

    Args:
        model: the pretrained classifier.
        path: destination file.
        head: the head's module path (found automatically when omitted).
        config: the configuration that produced the weights.
        **metadata: more JSON-serialisable facts (source data set, accuracy, ...).

    Returns:
        The path written.

    Raises:
        ConfigError: the model was pruned, sparsified or quantized by :mod:`warmstart.compress`
            (use :func:`warmstart.compress.save_compressed`).

    Examples:
        >>> from warmstart.models import small_cnn
        >>> path = save_pretrained(small_cnn(width=4), "/tmp/pre.safetensors", source="mnist5k")
    """
    compressed = getattr(model, COMPRESSION_ATTRIBUTE, None)
    if compressed:
        raise ConfigError(f"this model was {' and '.join(compressed)} by warmstart.compress, so the original "
                          "architecture cannot hold its weights; save it with warmstart.compress.save_compressed"
                          "(model, path), which records what rebuilding it needs")
    info = find_head(model, head)
    meta = {"model_class": type(model).__name__, "head": info.name, "num_classes": info.num_classes,
            "config": config or {}, **metadata}
    return save_weights(path, model.state_dict(), meta)
