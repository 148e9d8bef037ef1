"""int8 quantization through torchao, with an "auto" mode that picks by measured latency on this device."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from warmstart.compress._deps import import_torchao_quantization
from warmstart.compress._latency import _device_of, measure_latency
from warmstart.compress._layers import add_to_record, compression_record, refuse_quantized
from warmstart.compress._pt2e import CompiledInt8Model, check_static_request, quantize_static
from warmstart.errors import ConfigError

MODES = ("auto", "int8-weight", "int8-dynamic", "int8-static", "int8-dynamic-eager")
TORCHAO_MODES = ("int8-weight", "int8-dynamic")
EAGER_MODE = "int8-dynamic-eager"  # torch.ao.quantization.quantize_dynamic: deprecated, and the fastest on x86 CPUs
WEIGHT_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)

Example = torch.Tensor | tuple[torch.Tensor, ...]


@dataclasses.dataclass
class QuantizeReport:
    """What :func:`quantize` did.

    Attributes:
        mode: the mode applied: ``"int8-weight"``, ``"int8-dynamic"``, ``"int8-static"``, or
            ``"fp32"`` when ``"auto"`` found no int8 mode faster than the float model here.
        device: where the model ran.
        layers: the layers quantized.
        skipped: weight layers left in float, with the reason.
        latency_ms: median milliseconds per call on the example input: ``"fp32"`` and each mode
            measured (empty without an example input).
        failed: ``{mode: reason}`` for modes ``"auto"`` tried that could not be built here.
        bytes_before: bytes of the float model's weights and buffers.
        bytes_after: bytes of the quantized model's (int8 data, scales, float leftovers).
        max_abs_error: ``max |quantized(x) - float(x)|`` on the example input (``None`` without one).
        note: a sentence on the choice, for ``"auto"``.
    """

    mode: str
    device: str
    layers: list[str]
    skipped: list[str]
    latency_ms: dict[str, float]
    failed: dict[str, str]
    bytes_before: int
    bytes_after: int
    max_abs_error: float | None
    note: str = ""

    @property
    def speedup(self) -> float | None:
        """``latency_ms["fp32"] / latency_ms[mode]`` when both were measured."""
        if "fp32" not in self.latency_ms or self.mode not in self.latency_ms:
            return None
        return self.latency_ms["fp32"] / self.latency_ms[self.mode]

    def __str__(self) -> str:
        timings = ", ".join(f"{mode} {ms:.3f} ms" for mode, ms in self.latency_ms.items())
        rows = [f"quantize: {self.mode} on {self.device}; {len(self.layers)} layers quantized, {len(self.skipped)} "
                f"left in float; weights {self.bytes_before:,} -> {self.bytes_after:,} bytes"]
        if timings:
            rows.append(f"  latency (median): {timings}")
        if self.max_abs_error is not None:
            rows.append(f"  max |quantized - float| on the example input: {self.max_abs_error:.4g}")
        rows += [f"  {mode} failed here: {reason}" for mode, reason in self.failed.items()]
        if self.note:
            rows.append(f"  {self.note}")
        return "\n".join(rows)


def quantize(model: nn.Module, mode: str = "auto", example_input: Example | None = None, *,
             calibration: Iterable[Any] | None = None, candidates: Sequence[str] | None = None,
             min_speedup: float = 1.1, repeats: int = 20) -> tuple[nn.Module, QuantizeReport]:
    """Quantize a copy of ``model`` to int8; the float model is left as it was.

    Modes:

    - ``"int8-weight"``: torchao ``Int8WeightOnlyConfig``: Linear weights stored in int8 with a
      float scale per output row, dequantized in the matmul. About 4x smaller; on CPU no faster
      than float (it saves memory traffic, not arithmetic).
    - ``"int8-dynamic"``: torchao ``Int8DynamicActivationInt8WeightConfig``: int8 weights, and
      activations quantized per row at run time for an int8 matmul. Built for GPUs under
      ``torch.compile``; on the CPUs we measured, much *slower* than float.
    - ``"int8-static"``: torchao's PT2E flow with the ``X86InductorQuantizer``: Linear and
      convolution weights per channel, activations with ranges fixed by ``calibration``, compiled
      by inductor with frozen weights (x86 CPUs only; inference only; a :class:`CompiledInt8Model`).
      The fast CPU path today; on convolutional nets part of its gain is the compiler's, which
      ``torch.compile`` of the float model alone also gives.
    - ``"int8-dynamic-eager"``: PyTorch's eager ``torch.ao.quantization.quantize_dynamic`` on the
      Linear layers (fbgemm on x86, qnnpack on ARM): int8 weights and dynamically quantized
      activations in prepacked kernels. PyTorch deprecates this API in favour of torchao, but on
      the CPUs we measured it is the fastest int8 path for Linear-heavy models (2.3x float at
      batch 64 on an idle 2-core x86 CPU, more under load; ``bench/RESULTS.md``), so it is
      offered, and its deprecation warning is replaced by this note. CPU only; inference only; not savable (quantize after loading).
    - ``"auto"``: time the float model and each candidate on ``example_input`` (median of
      ``repeats`` calls), and return the fastest candidate if it is at least ``min_speedup``
      times faster than float. Otherwise return an unchanged copy of the float model with
      ``report.mode == "fp32"`` and a note saying int8 is not faster here: a model that is
      smaller but slower is rarely what a latency-driven choice wants (ask for
      ``"int8-weight"`` for size).

    CPUs without VNNI (AVX2 only) get ``reduce_range`` (7-bit activations) for the dynamic and
    static modes, which torchao recommends there to avoid int16 overflow in the int8 dot products.

    Args:
        model: a float network.
        mode: one of ``"auto"``, ``"int8-weight"``, ``"int8-dynamic"``, ``"int8-static"``,
            ``"int8-dynamic-eager"``.
        example_input: a typical batch (the batch size you will run); needed by ``"auto"`` and
            ``"int8-static"``, used by the others to measure latency and error.
        calibration: batches (``x`` or ``(x, y)``) for ``"int8-static"``'s activation ranges
            (``None``: the example input alone; pass a few hundred samples for accuracy). An empty
            one is refused.
        candidates: modes ``"auto"`` tries (default: ``int8-weight``, ``int8-dynamic`` and, on
            CPUs, ``int8-dynamic-eager`` and (x86) ``int8-static``).
        min_speedup: how much faster than float a mode must measure for ``"auto"`` to take it.
        repeats: timed calls per measurement.

    Returns:
        ``(quantized model in eval mode, QuantizeReport)``. int8 models are for inference:
        ``Trainer`` and :func:`recover` refuse them (their int8 weights take no gradients); train
        the float model first, or train through :func:`warmstart.compress.prepare_qat`.

    Raises:
        ConfigError: an unknown mode, a missing example input (or, for ``"int8-static"``, a batch
            of one), empty calibration data, a model that is already int8, a model with no layer the
            mode quantizes, or int8-static off x86 CPUs.

    Examples:
        >>> from warmstart.models import mlp
        >>> quantized, report = quantize(mlp(784, [64], 10), "int8-weight", torch.randn(8, 784))
        >>> report.layers
        ['fc1.0', 'head']
    """
    _check_request(mode, example_input, candidates)
    _check_calibration(calibration)
    refuse_quantized(model, "quantize", "Quantize the float model it was made from (quantize returns a copy and "
                     "leaves the float model as it was).")
    if "fake-quantized" in compression_record(model):
        raise ConfigError("this is a QATModel (prepare_qat's fake-quantized copy): convert it with "
                          "warmstart.compress.convert_qat(model), which keeps the ranges it learned")
    float_model = copy.deepcopy(model).eval()
    if mode == "auto":
        return _auto(float_model, as_tuple(example_input), calibration, candidates, min_speedup, repeats)
    quantized, layers, skipped = _apply(copy.deepcopy(float_model), mode, example_input, calibration)
    latency = {}
    if example_input is not None:
        latency = {name: 1e3 * measure_latency(m, example_input, repeats=repeats)
                   for name, m in (("fp32", float_model), (mode, quantized))}
    return quantized, _report(mode, float_model, quantized, layers, skipped, latency, {}, example_input)


def _check_request(mode: str, example_input: Example | None, candidates: Sequence[str] | None) -> None:
    if isinstance(candidates, str):
        raise ConfigError(f"candidates is a list of modes, got the string '{candidates}'; e.g. "
                          f"candidates=['{candidates}']")
    for name, valid in [(mode, MODES), *((candidate, MODES[1:]) for candidate in candidates or [])]:
        if not isinstance(name, str):
            raise ConfigError(f"the quantization mode must be a string, one of {', '.join(valid)}; got {name!r}")
        if name not in valid:
            match = difflib.get_close_matches(name, valid, n=1)
            hint = f" (did you mean '{match[0]}'?)" if match else ""
            raise ConfigError(f"unknown quantization mode '{name}'{hint}; valid: {', '.join(valid)}")
    if mode in ("auto", "int8-static") and example_input is None:
        raise ConfigError(f"mode '{mode}' needs example_input: a typical batch, at the batch size you will run "
                          f"({'to time each mode on this device' if mode == 'auto' else 'to export the graph'})")


def _check_calibration(calibration: Iterable[Any] | None) -> None:
    """Refuse calibration data that holds no batch (an empty DataLoader), rather than calibrate on something else."""
    if calibration is None or not hasattr(calibration, "__len__"):
        return  # an iterator's length shows only when it is read: quantize_static refuses it empty then
    if len(calibration) == 0:  # type: ignore[arg-type]
        raise ConfigError(f"calibration is empty (a {type(calibration).__name__} of no batches): static int8 sets its "
                          "activation ranges from these batches; pass a few hundred training samples, or leave "
                          "calibration=None to calibrate on example_input alone")


def _apply(model: nn.Module, mode: str, example_input: Example | None,
           calibration: Iterable[Any] | None) -> tuple[nn.Module, list[str], list[str]]:
    """Quantize ``model`` (a copy, changed in place) by ``mode``: ``(model, quantized layers, skipped layers)``."""
    if mode == "int8-static":
        example = as_tuple(example_input)
        check_static_request(model, example)
        layers = layers_of(model, WEIGHT_LAYERS, mode)
        quantized = quantize_static(model, example, [example] if calibration is None else calibration,
                                     reduce_range_for(model))
        return quantized, layers, []
    layers = layers_of(model, (nn.Linear,), mode)
    skipped = [f"{name} ({type(m).__name__}: {mode} quantizes nn.Linear only; 'int8-static' covers convolutions)"
               for name, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)]
    if mode == EAGER_MODE:
        return _quantize_eager(model), layers, skipped
    quantization = import_torchao_quantization()
    if mode == "int8-weight":
        config = quantization.Int8WeightOnlyConfig()
    else:
        config = quantization.Int8DynamicActivationInt8WeightConfig(reduce_range=reduce_range_for(model))
    quantization.quantize_(model, config)
    return model, layers, skipped


def _quantize_eager(model: nn.Module) -> nn.Module:
    """``torch.ao.quantization.quantize_dynamic`` on the Linear layers, in place (CPU only)."""
    if _device_of(model).type != "cpu":
        raise ConfigError(f"mode '{EAGER_MODE}' runs on the CPU only (its kernels are fbgemm/qnnpack); move the model "
                          "to the CPU, or use 'int8-weight'/'int8-dynamic' (torchao) on the GPU")
    with warnings.catch_warnings():  # its deprecation in favour of torchao is stated in quantize's docstring
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)


def layers_of(model: nn.Module, kinds: tuple[type, ...], mode: str) -> list[str]:
    # torchao leaves attention's out-projection (NonDynamicallyQuantizableLinear) alone
    layers = [name for name, m in model.named_modules()
              if isinstance(m, kinds) and not isinstance(m, nn.modules.linear.NonDynamicallyQuantizableLinear)]
    if not layers:
        present = sorted({type(m).__name__ for m in model.modules() if any(True for _ in m.parameters(recurse=False))})
        raise ConfigError(f"{type(model).__name__} has no layer that mode '{mode}' quantizes "
                          f"({' and '.join(k.__name__ for k in kinds)}); its layers with weights are: "
                          f"{', '.join(present) or 'none'}. "
                          + ("Use 'int8-static' for convolutions." if mode in TORCHAO_MODES else ""))
    return layers


def reduce_range_for(model: nn.Module) -> bool:
    from torchao.utils import should_reduce_range

    return bool(should_reduce_range(_device_of(model)))


def _auto(float_model: nn.Module, example: tuple[torch.Tensor, ...], calibration: Iterable[Any] | None,
          candidates: Sequence[str] | None, min_speedup: float, repeats: int) -> tuple[nn.Module, QuantizeReport]:
    """Time float and each candidate; keep the fastest if it beats float by ``min_speedup``."""
    latency = {"fp32": 1e3 * measure_latency(float_model, example, repeats=repeats)}
    failed: dict[str, str] = {}
    best: tuple[str, nn.Module, list[str], list[str]] | None = None
    for mode in candidates or _default_candidates(float_model):
        try:
            quantized, layers, skipped = _apply(copy.deepcopy(float_model), mode, example, calibration)
            latency[mode] = 1e3 * measure_latency(quantized, example, repeats=repeats)
        except Exception as err:  # auto tries what may not work here (no layers, no compiler): note why, go on
            failed[mode] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
            continue
        if best is None or latency[mode] < latency[best[0]]:
            best = (mode, quantized, layers, skipped)
    if best is not None and latency["fp32"] / latency[best[0]] >= min_speedup:
        mode, quantized, layers, skipped = best
        note = f"auto: '{mode}' measured {latency['fp32'] / latency[mode]:.2f}x faster than fp32 here"
        return quantized, _report(mode, float_model, quantized, layers, skipped, latency, failed, example, note)
    note = (f"auto: no int8 mode was at least {min_speedup}x faster than fp32 on {_device_of(float_model).type} for "
            f"this input, so the float model is returned unchanged; pass mode='int8-weight' for a 4x smaller model")
    return float_model, _report("fp32", float_model, float_model, [], [], latency, failed, example, note)


def _default_candidates(model: nn.Module) -> list[str]:
    on_cpu = _device_of(model).type == "cpu"
    return ["int8-weight", "int8-dynamic", *([EAGER_MODE, "int8-static"] if on_cpu else [])]


def _report(mode: str, float_model: nn.Module, quantized: nn.Module, layers: list[str], skipped: list[str],
            latency: dict[str, float], failed: dict[str, str], example_input: Example | None,
            note: str = "") -> QuantizeReport:
    if mode != "fp32":
        add_to_record(quantized, "quantized", {"mode": mode, "layers": layers})
    error = None
    if example_input is not None:
        with torch.no_grad():
            reference = float_model(*as_tuple(example_input))
            error = float((quantized(*as_tuple(example_input)).float() - reference).abs().max())
    return QuantizeReport(mode, _device_of(float_model).type, layers, skipped, latency, failed,
                          tensor_bytes(float_model), tensor_bytes(quantized), error, note)


def tensor_bytes(model: nn.Module) -> int:
    """Bytes of a model's weights and buffers as stored: int8 data and scales for quantized weights.

    A tensor that several layers share (tied weights) is counted once.
    """
    if isinstance(model, CompiledInt8Model):
        return model.int8_bytes()
    tensors = {_identity(t): t for t in model.state_dict().values()}
    return sum(_stored_bytes(t) for t in tensors.values())


def _identity(tensor: Any) -> Any:
    """What makes two state-dict entries one stored tensor: the same memory, shape and dtype (tied weights)."""
    if type(tensor) is torch.Tensor:
        return tensor.data_ptr(), tuple(tensor.shape), tensor.dtype
    return id(tensor)


def _stored_bytes(tensor: Any) -> int:
    if isinstance(tensor, (tuple, list)):  # eager quantized Linear: (packed int8 weight, bias)
        return sum(_stored_bytes(t) for t in tensor)
    if not isinstance(tensor, torch.Tensor):  # e.g. the dtype an eager quantized Linear records
        return 0
    if type(tensor) is not torch.Tensor and hasattr(tensor, "__tensor_flatten__"):  # a torchao tensor subclass
        names, _ = tensor.__tensor_flatten__()
        return sum(_stored_bytes(getattr(tensor, name)) for name in names)
    return tensor.numel() * tensor.element_size()


def as_tuple(example: Example | None) -> tuple[torch.Tensor, ...]:
    return tuple(example) if isinstance(example, (tuple, list)) else (example,)  # type: ignore[return-value]
