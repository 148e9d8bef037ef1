"""Import the optional compression back ends lazily, with an install hint when one is missing."""

from __future__ import annotations

from types import ModuleType

from warmstart.errors import ConfigError


def _missing(package: str, what: str) -> ConfigError:
    return ConfigError(f"{what} needs the '{package}' package, which is not installed: pip install {package} "
                       f"(or pip install 'warmstart[compress]')")


def import_torch_pruning() -> ModuleType:
    """``torch_pruning``, imported on first use (it takes seconds: it probes for timm)."""
    try:
        import torch_pruning
    except ImportError:
        raise _missing("torch-pruning", "structured pruning") from None
    return torch_pruning


def import_torchao_quantization() -> ModuleType:
    """``torchao.quantization``, imported on first use."""
    try:
        import torchao.quantization
    except ImportError:
        raise _missing("torchao", "int8 quantization") from None
    return torchao.quantization
