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


def import_onnx_runtime() -> ModuleType:
    """``onnxruntime``, after checking that the ONNX exporter's packages (onnx, onnxscript) are there too."""
    try:
        import onnx  # noqa: F401  (torch.onnx's dynamo exporter writes through onnx and onnxscript)
        import onnxruntime
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise ConfigError(f"format='onnx' needs the 'deploy' extra (onnx, onnxscript, onnxruntime); '{err.name}' is "
                          "not installed: pip install 'warmstart[deploy]' (or pip install onnx onnxscript "
                          "onnxruntime)") from None
    return onnxruntime
