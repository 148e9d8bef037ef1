"""Deployable files: a compressed model exported by ``torch.export`` (``.pt2``) or to ONNX, loadable without warmstart."""

from __future__ import annotations

import copy
import difflib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from warmstart.checkpoint import atomic_path
from warmstart.compress._deps import import_onnx_runtime
from warmstart.compress._layers import compression_record, quantized_mode
from warmstart.compress._pt2e import CompiledInt8Model
from warmstart.errors import ConfigError

FORMATS = ("pt2", "onnx", "onnx-int8")
EXTRA_FILE = "warmstart.json"  # what the program needs to load (torchao), stored inside the .pt2 archive
ONNX_TOLERANCE = 1e-4  # ONNX Runtime's kernels against eager PyTorch, float32 (measured: under 1e-7 on small nets)


def export(model: nn.Module, example_input: torch.Tensor | tuple[torch.Tensor, ...], path: str | os.PathLike, *,
           format: str = "pt2", dynamic_batch: bool = True, calibration: Iterable[Any] | None = None) -> Path:
    """Write ``model`` as a file a serving process loads with torch (``.pt2``) or ONNX Runtime (``.onnx``) alone.

    ``"pt2"``: ``torch.export`` of the model in eval mode, saved with ``torch.export.save``; load it
    with ``torch.export.load(path).module()``. It covers float, pruned and sparse models, int8
    models from :func:`quantize` (``"int8-weight"``, ``"int8-dynamic"``, ``"int8-static"``) and
    the int8 model :func:`convert_qat` returns. int8 files need torchao installed where they load
    and ``import torchao`` before ``torch.export.load`` (it registers the int8 operators; the
    ``"int8-weight"``/``"int8-dynamic"`` weights are torchao tensors). The file records this in
    its ``warmstart.json`` extra file (``torch.export.load(path, extra_files={"warmstart.json": ""})``).
    The exported int8-static graph runs torch's reference quantize/dequantize operators; for
    the fused int8 kernels, ``torch.compile`` it with inductor's ``freezing`` on, as
    :class:`CompiledInt8Model` does. Measured against the in-process model: float, pruned,
    sparse, ``"int8-weight"`` and ``"int8-dynamic"`` programs give identical outputs;
    ``"int8-static"`` and QAT programs agree within one activation quantization step on
    inputs inside the calibrated range (most rows exactly), while activations beyond it
    saturate differently (the graph clamps to the 7-bit range of ``reduce_range`` CPUs,
    inductor's kernels do not), so calibrate on data like what will be served.

    ``"onnx"``: ``torch.onnx.export(..., dynamo=True)`` for float, pruned and sparse models,
    then run once in ONNX Runtime and compared with the model (within ``1e-4``). Needs the
    ``deploy`` extra. int8 models are refused: export the float model with ``"onnx-int8"``.

    ``"onnx-int8"``: the float ONNX file quantized by ONNX Runtime's own static quantizer (QDQ,
    int8 weights per channel, uint8 activations (int8 on ARM) with ranges from ``calibration``,
    7-bit weights where torchao's ``should_reduce_range`` says so). On our 2-core x86 CPU it
    served Linear-heavy models well (``mlp(784, [1024, 1024], 10)``, batch 64: 1.7 ms against
    11.4 ms for the float ONNX file) and convolutional ones not at all (``small_cnn``: 7.5
    against 7.1 ms); ``bench/export_latency.py`` measures yours. ONNX Runtime's dynamic
    quantizer was slower than the static one on both, so it is not offered.

    ``torch.export.load`` unpickles weights: load only files you trust.

    Args:
        model: the model (its train/eval mode is restored afterwards; a :class:`QATModel` is
            refused: :func:`convert_qat` it first).
        example_input: a batch, or a tuple of positional inputs, that the model runs on.
        path: the file to write (``model.pt2``, ``model.onnx``).
        format: ``"pt2"`` or ``"onnx"``.
        dynamic_batch: let the file take any batch size (the first dimension of every input);
            ``False`` fixes the example's shapes.
        calibration: for ``"onnx-int8"``, batches (``x`` or ``(x, y)``) that set the activation
            ranges (``None``: the example input alone; pass a few hundred samples).

    Returns:
        The path written.

    Raises:
        ConfigError: an unknown format, an example input that is not tensors or does not run
            through the model, a model ``torch.export`` cannot capture (control flow that depends
            on tensor values), an int8 model for ONNX, or the ``deploy`` extra missing for ONNX.

    Examples:
        >>> from warmstart.models import mlp
        >>> path = export(mlp(16, [32], 3), torch.randn(4, 16), "/tmp/mlp.pt2")
        >>> torch.export.load(path).module()(torch.randn(7, 16)).shape
        torch.Size([7, 3])
    """
    example = _check_request(model, example_input, format)
    if Path(path).is_dir():
        raise ConfigError(f"export writes one file, and '{path}' is a folder: give the file's path, e.g. "
                          f"{Path(path) / ('model.pt2' if format == 'pt2' else 'model.onnx')}")
    target = model.graph if isinstance(model, CompiledInt8Model) else model
    needs = ["torchao"] if quantized_mode(model) is not None else []
    if format.startswith("onnx"):
        import_onnx_runtime()
    was_training = model.training
    try:
        model.eval()
        _check_runs(target, example)
        if format == "onnx-int8":
            _export_onnx_int8(target, example, dynamic_batch, Path(path), calibration)
        elif format == "pt2":
            program = _export_program(target, example, dynamic_batch)
            facts = {"needs": needs, "record": compression_record(model), "dynamic_batch": dynamic_batch,
                     "input_shapes": [list(t.shape) for t in example], "torch": torch.__version__}
            with atomic_path(path) as tmp, open(tmp, "wb") as file:  # a file object: torch wants a name ending in .pt2
                torch.export.save(program, file, extra_files={EXTRA_FILE: json.dumps(facts)})
        else:
            _export_onnx(target, example, dynamic_batch, Path(path))
    finally:
        model.train(was_training)
    return Path(path)


def export_int8_graph(model: CompiledInt8Model) -> torch.export.ExportedProgram:
    """Export an int8-static model's graph again, on zeros shaped like the inputs it was exported with (batch 2).

    Raises:
        ConfigError: the graph carries no input shapes (it was not made by ``torch.export``, as
            :func:`quantize` and :func:`convert_qat` make it).
    """
    inputs = [node.meta.get("val") for node in model.graph.graph.nodes if node.op == "placeholder"]
    if not inputs or any(not isinstance(value, torch.Tensor) for value in inputs):
        raise ConfigError("this int8 graph records no input shapes (it was not exported by torch.export, as "
                          "quantize(model, 'int8-static', ...) and convert_qat make it), so it cannot be saved")
    # the batch dimension is symbolic (a torch.SymInt); every other is a plain int
    example = tuple(torch.zeros([2, *[int(d) for d in value.shape[1:]]], dtype=value.dtype) for value in inputs)
    return _export_program(model.graph, example, dynamic_batch=True)


def _check_request(model: nn.Module, example_input: Any, format: str) -> tuple[torch.Tensor, ...]:
    if format not in FORMATS:
        match = difflib.get_close_matches(str(format), FORMATS, n=1)
        raise ConfigError(f"unknown export format {format!r}{f' (did you mean {match[0]!r}?)' if match else ''}; "
                          f"valid: {', '.join(FORMATS)}")
    if isinstance(model, tuple):
        raise ConfigError(_tuple_given("export"))
    example = tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)
    if not example or not all(isinstance(t, torch.Tensor) for t in example):
        kinds = ", ".join(type(t).__name__ for t in example) or "nothing"
        raise ConfigError(f"example_input must be a tensor or a tuple of tensors (the model's positional inputs), "
                          f"got {kinds}")
    if "fake-quantized" in compression_record(model):
        raise ConfigError("this is a QATModel (a training graph with fake int8): convert it with "
                          "warmstart.compress.convert_qat(model) and export the int8 model it returns")
    if quantized_mode(model) in ("int8-dynamic-eager", "int8 (torch.ao)"):
        raise ConfigError("an 'int8-dynamic-eager' model holds prepacked fbgemm kernels that torch.export cannot "
                          "capture; export quantize(model, 'int8-dynamic') or 'int8-static' instead, or the float model")
    if format.startswith("onnx") and quantized_mode(model) is not None:
        raise ConfigError(f"format='onnx' covers float, pruned and sparse models; this one is int8 "
                          f"('{quantized_mode(model)}'), so export it with format='pt2', or export the float model "
                          "with format='onnx-int8' (ONNX Runtime's own int8 quantizer)")
    return example


def _tuple_given(action: str) -> str:
    return (f"{action} got a tuple, not a model: quantize, convert_qat and prune return (model, report); pass the "
            f"model, e.g. model, report = quantize(...); {action}(model, ...)")


def _check_runs(model: nn.Module, example: tuple[torch.Tensor, ...]) -> None:
    """Run the example once, so a wrong shape or dtype is named as such and not as an export failure."""
    try:
        with torch.no_grad():
            model(*example)
    except Exception as err:  # whatever the forward raises means this input does not fit this model
        shapes = ", ".join(f"{list(t.shape)} {t.dtype}" for t in example)
        expected = compression_record(model).get("pruned", {}).get("example_input_shapes")
        hint = f" (it was pruned with inputs shaped {expected})" if expected else ""
        raise ConfigError(f"example_input ({shapes}) does not run through {type(model).__name__}{hint}: "
                          f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300]}; pass a batch shaped "
                          "like the model's inputs") from err


def _dynamic_shapes(example: tuple[torch.Tensor, ...], dynamic_batch: bool) -> tuple[Any, ...] | None:
    if not dynamic_batch:
        return None
    batch = torch.export.Dim("batch", min=1)  # one symbol: every input shares the batch dimension
    return tuple({0: batch} if t.dim() else None for t in example)


def _for_export(example: tuple[torch.Tensor, ...], dynamic_batch: bool) -> tuple[torch.Tensor, ...]:
    """The example, a batch of one repeated to two: export specialises a dimension of size 1 to the constant 1."""
    if dynamic_batch and any(t.dim() and t.shape[0] == 1 for t in example):
        return tuple(torch.cat([t, t]) if t.dim() else t for t in example)
    return example


def _export_program(model: nn.Module, example: tuple[torch.Tensor, ...],
                    dynamic_batch: bool) -> torch.export.ExportedProgram:
    example = _for_export(example, dynamic_batch)
    try:
        return torch.export.export(model, example, dynamic_shapes=_dynamic_shapes(example, dynamic_batch))
    except Exception as err:  # export raises many error types, all meaning the graph could not be captured
        raise _capture_error(model, err, dynamic_batch) from err


def _capture_error(model: nn.Module, err: Exception, dynamic_batch: bool) -> ConfigError:
    first = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
    text = str(err)
    if dynamic_batch and ("batch" in text and ("specialized" in text or "Constraints violated" in text)):
        why = ("the forward fixes the batch size (e.g. x.view(64, -1)); use x.flatten(1) / x.view(x.shape[0], -1), "
               "or export with dynamic_batch=False")
    else:
        why = ("a forward whose control flow depends on tensor values (if x.sum() > 0: ...) cannot be captured as one "
               "graph; write it with torch.where or torch.cond")
    return ConfigError(f"torch.export cannot capture {type(model).__name__} ({type(err).__name__}: {first}): {why}")


def _export_onnx(model: nn.Module, example: tuple[torch.Tensor, ...], dynamic_batch: bool, path: Path) -> None:
    """``torch.onnx.export`` (the dynamo exporter), then one ONNX Runtime run checked against the model."""
    import numpy as np
    import onnxruntime

    exported = _for_export(example, dynamic_batch)
    names = [f"input_{i}" for i in range(len(example))] if len(example) > 1 else ["input"]
    try:
        program = torch.onnx.export(copy.deepcopy(model), exported, dynamo=True, input_names=names,
                                    dynamic_shapes=_dynamic_shapes(exported, dynamic_batch), verbose=False)
    except Exception as err:  # the exporter wraps torch.export's errors in its own
        raise _capture_error(model, err, dynamic_batch) from err
    with atomic_path(path) as tmp:
        program.save(str(tmp))
        session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        outputs = session.run(None, {name: t.detach().cpu().numpy() for name, t in zip(names, example)})
        with torch.no_grad():
            expected = model(*example)
        expected = expected if isinstance(expected, (tuple, list)) else (expected,)
        error = max(float(np.abs(o - e.detach().cpu().numpy()).max()) for o, e in zip(outputs, expected))
        if error > ONNX_TOLERANCE:
            raise ConfigError(f"the ONNX file differs from the model by {error:.3g} on the example input (more than "
                              f"{ONNX_TOLERANCE}): an operator is exported with other semantics; use format='pt2'")


def _export_onnx_int8(model: nn.Module, example: tuple[torch.Tensor, ...], dynamic_batch: bool, path: Path,
                      calibration: Iterable[Any] | None) -> None:
    """The float ONNX file, quantized by ONNX Runtime's static quantizer (QDQ, per-channel weights)."""
    import platform
    import tempfile

    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quant_pre_process,
                                          quantize_static)

    from warmstart.compress._pt2e import _inputs_of
    from warmstart.compress._quantize import reduce_range_for

    names = [f"input_{i}" for i in range(len(example))] if len(example) > 1 else ["input"]
    feeds = [{n: t.detach().cpu().numpy() for n, t in zip(names, _inputs_of(b) if len(example) == 1 else b)}
             for b in (calibration if calibration is not None else [example])]
    if not feeds:
        raise ConfigError("calibration holds no batches: ONNX Runtime's static int8 sets its activation ranges from "
                          "them; pass a few hundred training samples, or calibration=None for the example input")
    for feed in feeds:  # ONNX Runtime would name the shapes in its own terms, deep in its calibration
        for name, example_tensor in zip(names, example):
            if feed[name].shape[1:] != tuple(example_tensor.shape[1:]):
                raise ConfigError(f"a calibration batch has samples of shape {tuple(feed[name].shape[1:])}, the "
                                  f"example input {tuple(example_tensor.shape[1:])}: calibrate on batches of the inputs "
                                  "the model takes (the same shape but the batch size)")

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(feeds)

        def get_next(self) -> dict[str, Any] | None:
            return next(self.batches, None)

    arm = platform.machine().lower() in ("arm64", "aarch64")
    with tempfile.TemporaryDirectory(prefix="warmstart-onnx-") as folder:
        float_file, prepared = Path(folder) / "float.onnx", Path(folder) / "prepared.onnx"
        _export_onnx(model, example, dynamic_batch, float_file)
        quant_pre_process(str(float_file), str(prepared))  # shape inference and graph clean-up, as ORT advises
        with atomic_path(path) as tmp:
            quantize_static(str(prepared), str(tmp), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                            weight_type=QuantType.QInt8, reduce_range=reduce_range_for(model) and not arm,
                            activation_type=QuantType.QInt8 if arm else QuantType.QUInt8)
