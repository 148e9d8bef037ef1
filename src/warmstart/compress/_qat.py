"""Quantization-aware training: torchao's PT2E QAT flow (fake int8 in training), converted to the int8-static graph."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from warmstart.compress._latency import measure_latency
from warmstart.compress._layers import add_to_record, compression_record
from warmstart.compress._pt2e import (CompiledInt8Model, Inputs, check_static_request, compiled_now, export_graph,
                                      x86_quantizer)
from warmstart.compress._quantize import (WEIGHT_LAYERS, QuantizeReport, as_tuple, layers_of, reduce_range_for,
                                          tensor_bytes)
from warmstart.errors import ConfigError

QAT_MODE = "int8-static"  # what convert_qat produces: the same compiled int8 graph as post-training static int8


class QATModel(nn.Module):
    """A copy of a float model with int8 fake quantization on its weights and activations, to train.

    Every Linear and convolution's weights (per channel) and the activations around them (per
    tensor) go through torchao fake-quantize modules, which round to the int8 grid in the
    forward pass and let gradients through (straight-through estimator), so training learns
    weights that survive rounding. Convolutions followed by BatchNorm are trained with the
    BatchNorm folded in, as the int8 graph will run them.

    Train it like any model (``warmstart.Trainer``, ``DistillTrainer``, :func:`recover`), then
    call :func:`convert_qat`. ``train()``/``eval()`` switch the exported graph's BatchNorm and
    dropout (an exported graph's mode is otherwise fixed at export) and the range observers:
    they follow the activations in train mode only, so evaluating (validation every epoch)
    does not move the int8 ranges towards the evaluation data.

    Attributes:
        graph: the prepared ``torch.fx.GraphModule``.
        example: the example batch it was exported with (for compiling the converted graph).
    """

    def __init__(self, graph: nn.Module, example: Inputs):
        super().__init__()
        self.graph = graph
        self.example = example

    def forward(self, *inputs: torch.Tensor) -> Any:
        return self.graph(*inputs)

    def train(self, mode: bool = True) -> QATModel:
        _set_graph_mode(self.graph, mode)
        self.set_observers(mode)
        self.training = mode
        return self

    def set_observers(self, enabled: bool) -> None:
        """Let the fake-quantize modules follow the data seen (as ``train()`` does), or freeze their ranges."""
        _set_observers(self.graph, enabled)


def _set_observers(graph: nn.Module, enabled: bool) -> None:
    from torchao.quantization.pt2e import FakeQuantizeBase

    for module in graph.modules():
        if isinstance(module, FakeQuantizeBase):
            module.enable_observer(enabled)


# the ops of an exported training graph that behave differently in training, and where their ``training`` flag is
_MODE_ARGUMENT = {torch.ops.aten.dropout.default: 2, torch.ops.aten.feature_dropout.default: 2,
                  torch.ops.aten.alpha_dropout.default: 2, torch.ops.aten.feature_alpha_dropout.default: 2,
                  torch.ops.aten.batch_norm.default: 5}


def _set_graph_mode(graph: torch.fx.GraphModule, mode: bool) -> None:
    """Set the ``training`` flag of the graph's dropout and BatchNorm calls.

    torchao's ``move_exported_model_to_train``/``_eval`` do this by pattern replacement, which
    re-exports the patterns on every call (seconds per switch, every epoch) and, in torchao 0.18,
    writes the pattern's dropout probability 0.5 over the model's own; flipping the flag keeps
    every other argument.
    """
    changed = False
    for node in graph.graph.nodes:
        index = _MODE_ARGUMENT.get(node.target)
        if index is not None and node.args[index] != mode:
            node.update_arg(index, mode)
            changed = True
    if changed:
        graph.recompile()


def prepare_qat(model: nn.Module, example_input: torch.Tensor | tuple[torch.Tensor, ...]) -> QATModel:
    """A copy of ``model`` with int8 fake quantization, ready for quantization-aware training.

    Post-training static int8 (``quantize(model, "int8-static", ...)``) rounds trained weights and
    calibrated activation ranges once; when that costs accuracy (small or heavily pruned
    models, outlier activations), training a few epochs with the rounding in the loop recovers
    it. Distilling from the float model being quantized (``recover(qat, loader, teacher=model)``,
    ``model`` the one passed here, not a larger original) with a tenth of its training learning
    rate for a few epochs is the usual recipe. The flow is torchao's PT2E QAT with the
    ``X86InductorQuantizer``, so the result runs on x86 CPUs, like ``"int8-static"``.

    Args:
        model: the trained float model (left as it was; it is copied and exported in train mode).
        example_input: a typical batch of at least 2 samples (the batch size stays dynamic).

    Returns:
        A :class:`QATModel` in train mode, its int8 ranges set from ``example_input``.

    Raises:
        ConfigError: a batch of one, a non-x86 machine or a model on the GPU, a model with no
            Linear or convolution, or one ``torch.export`` cannot capture.

    Examples:
        >>> from warmstart.models import mlp
        >>> qat = prepare_qat(mlp(16, [32], 3), torch.randn(8, 16))
        >>> qat(torch.randn(4, 16)).shape
        torch.Size([4, 3])
    """
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    example = as_tuple(example_input)
    float_model = copy.deepcopy(model).train()
    check_static_request(float_model, example, "quantization-aware training")
    layers = layers_of(float_model, WEIGHT_LAYERS, "quantization-aware training")
    graph = prepare_qat_pt2e(export_graph(float_model, example, "quantization-aware training"),
                             x86_quantizer(reduce_range_for(float_model), is_qat=True))
    qat = QATModel(graph, tuple(t.detach().clone() for t in example))
    qat.eval()  # the graph was exported in train mode: this switches its BatchNorm and dropout
    qat.set_observers(True)
    with torch.no_grad():  # first ranges from the example batch, in eval mode: BatchNorm statistics stay as trained
        qat(*qat.example)
    qat.train()
    for step, facts in compression_record(model).items():  # a pruned model stays marked as pruned
        add_to_record(qat, step, facts)
    add_to_record(qat, "fake-quantized", {"layers": layers, "float_bytes": tensor_bytes(float_model)})
    return qat


def convert_qat(qat: QATModel, example_input: torch.Tensor | tuple[torch.Tensor, ...] | None = None, *,
                repeats: int = 20) -> tuple[CompiledInt8Model, QuantizeReport]:
    """Turn a trained :class:`QATModel` into the int8 graph it was trained for, compiled by inductor.

    The fake-quantize modules' learned scales and zero points become real int8 weights and
    quantize/dequantize steps; the result is the same kind of model ``quantize(...,
    "int8-static")`` returns (x86 CPUs, inference only, not savable as weights). ``qat`` is left
    as it was and can train on.

    Args:
        qat: the model :func:`prepare_qat` made, after training.
        example_input: a batch to compile on and to time (default: the batch it was prepared with).
        repeats: timed calls for the latency in the report.

    Returns:
        ``(int8 model, QuantizeReport)``; the report's ``max_abs_error`` compares the int8 model
        with the fake-quantized one on the example (what training saw), and ``latency_ms`` times
        both (the fake-quantized model as ``"qat (fake int8)"``: it is slower than float, not a
        float baseline).

    Raises:
        ConfigError: ``qat`` is not a :class:`QATModel`, or inductor cannot compile here.
    """
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    if not isinstance(qat, QATModel):
        raise ConfigError(f"convert_qat takes the QATModel that prepare_qat returned, got {type(qat).__name__}; for a "
                          "float model use quantize(model, 'int8-static', example_input, calibration=...)")
    example = qat.example if example_input is None else as_tuple(example_input)
    fake = copy.deepcopy(qat.graph).cpu()  # qat itself stays as it was (device, mode), and can train on
    _set_graph_mode(fake, False)
    _set_observers(fake, False)
    with torch.no_grad():
        reference = fake(*example)  # the fake-int8 outputs the int8 graph should reproduce
    int8 = compiled_now(CompiledInt8Model(convert_pt2e(copy.deepcopy(fake))), example)
    record = compression_record(qat)
    layers = record["fake-quantized"]["layers"]
    for step, facts in record.items():
        if step != "fake-quantized":
            add_to_record(int8, step, facts)
    add_to_record(int8, "quantized", {"mode": QAT_MODE, "layers": layers, "qat": True})
    with torch.no_grad():
        error = float((int8(*example).float() - reference).abs().max())
    latency = {"qat (fake int8)": 1e3 * measure_latency(fake, example, repeats=repeats),
               QAT_MODE: 1e3 * measure_latency(int8, example, repeats=repeats)}
    report = QuantizeReport(QAT_MODE, "cpu", layers, [], latency, {}, record["fake-quantized"]["float_bytes"],
                            int8.int8_bytes(), error, "int8-static from quantization-aware training")
    return int8, report
