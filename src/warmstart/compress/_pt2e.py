"""Static int8 on x86 CPUs: torchao's PT2E flow (export, X86InductorQuantizer, calibrate, convert), then inductor."""

from __future__ import annotations

import platform
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from warmstart.errors import ConfigError

Inputs = tuple[torch.Tensor, ...]


class CompiledInt8Model(nn.Module):
    """An int8 graph from torchao's PT2E flow, compiled by inductor with its weights frozen; inference only.

    Calls run under ``no_grad``. The graph was exported in eval mode, so ``train()`` and
    ``eval()`` only set the flag. The first call with a new input shape compiles (seconds).
    The model holds only what the graph reads (int8 weights, scales, zero points, float biases),
    none of it trainable: the float weights the conversion leaves behind are dropped.

    Attributes:
        graph: the converted ``torch.fx.GraphModule`` (quantize/dequantize ops around int8 weights).
    """

    def __init__(self, graph: nn.Module):
        super().__init__()
        _drop_unread_tensors(graph)
        self.graph = graph
        # kept out of the module tree: the compiled wrapper would register the same graph a second time
        object.__setattr__(self, "_compiled", torch.compile(graph, dynamic=False))

    def forward(self, *inputs: torch.Tensor) -> Any:
        # inductor fuses the int8 kernels only when it may fold the weights into the compiled code
        # ("freezing"), which needs no_grad; patching the flag keeps the global inductor config untouched
        with torch.no_grad(), torch._inductor.config.patch(freezing=True):
            return self._compiled(*inputs)

    def train(self, mode: bool = True) -> CompiledInt8Model:
        self.training = mode  # exported graphs refuse train()/eval(): their mode was fixed at export
        return self

    def int8_bytes(self) -> int:
        """Bytes of the tensors the graph reads (int8 weights, scales, zero points, float biases)."""
        names = {node.target for node in self.graph.graph.nodes if node.op == "get_attr"}
        state = self.graph.state_dict()
        return sum(state[name].numel() * state[name].element_size() for name in names if name in state)


def _drop_unread_tensors(graph: torch.fx.GraphModule) -> None:
    """Delete the tensors the graph never reads and freeze the rest, in place.

    convert_pt2e leaves the float weights in the module tree beside their int8 copies (the graph
    reads only the copies): they would make the model 5x the int8 size and show up as trainable
    parameters of a model that cannot train.
    """
    read = {node.target for node in graph.graph.nodes if node.op == "get_attr"}
    for name, _ in [*graph.named_parameters(), *graph.named_buffers()]:
        if name not in read:
            owner, _, attr = name.rpartition(".")
            delattr(graph.get_submodule(owner), attr)
    graph.delete_all_unused_submodules()
    graph.requires_grad_(False)


def check_static_request(model: nn.Module, example: Inputs, purpose: str = "int8-static") -> None:
    """Refuse int8-static (or QAT) for an example batch of one, or where the X86InductorQuantizer's kernels do not exist."""
    if any(t.dim() == 0 or t.shape[0] < 2 for t in example):
        raise ConfigError(f"{purpose} needs an example batch of at least 2 samples: torch.export fixes a batch "
                          "dimension of 1, and the model would then accept nothing else")
    on_gpu = any(p.device.type != "cpu" for p in model.parameters())
    if on_gpu or platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        raise ConfigError(f"{purpose} uses the X86InductorQuantizer and runs on x86 CPUs only (this is "
                          f"{platform.machine()}, model on {'GPU' if on_gpu else 'CPU'}); use 'int8-weight' or "
                          f"'int8-dynamic'")


def quantize_static(model: nn.Module, example: Inputs, calibration: Iterable[Any],
                    reduce_range: bool) -> CompiledInt8Model:
    """Export ``model`` (eval mode) with a dynamic batch dimension, calibrate, convert to int8 and compile.

    Args:
        model: a float model in eval mode (a copy: the PT2E flow rewrites it).
        example: positional inputs for export.
        calibration: batches (inputs, or tuples whose first item is the inputs) that set the
            activation ranges.
        reduce_range: use 7-bit activations, for CPUs without VNNI whose int8 dot products can
            overflow.
    """
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    prepared = prepare_pt2e(export_graph(model, example, "int8-static"), x86_quantizer(reduce_range, is_qat=False))
    batches = 0
    with torch.no_grad():
        for batch in calibration:
            prepared(*_inputs_of(batch))
            batches += 1
    if not batches:
        raise ConfigError("calibration yielded no batches (an empty or already consumed iterable): static int8 sets "
                          "its activation ranges from these batches; pass a few hundred training samples, or "
                          "calibration=None to calibrate on example_input alone")
    return compiled_now(CompiledInt8Model(convert_pt2e(prepared)), example)


def x86_quantizer(reduce_range: bool, is_qat: bool) -> Any:
    """torchao's X86InductorQuantizer for the whole model: int8 weights per channel, uint8 activations per tensor."""
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86

    quantizer = x86.X86InductorQuantizer()
    quantizer.set_global(x86.get_default_x86_inductor_quantization_config(is_qat=is_qat, reduce_range=reduce_range))
    return quantizer


def compiled_now(model: CompiledInt8Model, example: Inputs) -> CompiledInt8Model:
    """Compile at once on the example (seconds), so a missing compiler shows here and not at the first real call."""
    try:
        model(*example)
    except Exception as err:  # inductor raises its own error types, from its C++ build among others
        raise ConfigError(f"inductor could not compile the int8 graph ({type(err).__name__}: "
                          f"{str(err).strip().splitlines()[0][:300]}); int8-static needs a working C++ compiler "
                          f"(g++ or clang) for torch.compile on CPU, or use 'int8-weight'") from err
    return model


def export_graph(model: nn.Module, example: Inputs, purpose: str) -> nn.Module:
    """``torch.export`` the model in its current mode (eval for calibration, train for QAT), batch size dynamic."""
    # Dim.AUTO keeps the batch dimension dynamic when the example batch is larger than 1
    dynamic = tuple({0: torch.export.Dim.AUTO} for _ in example)
    try:
        return torch.export.export(model, example, dynamic_shapes=dynamic).module()
    except Exception as err:  # export reports many kinds of errors, all meaning the graph could not be captured
        raise ConfigError(f"torch.export cannot capture {type(model).__name__} for {purpose} "
                          f"({type(err).__name__}: {str(err).splitlines()[0][:300]}); use 'int8-weight' or "
                          f"'int8-dynamic', which need no export") from err


def _inputs_of(batch: Any) -> Inputs:
    if isinstance(batch, torch.Tensor):
        return (batch,)
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return (batch[0],)  # (inputs, targets, ...) as data loaders yield them
    raise ConfigError(f"calibration batches must be tensors or (inputs, targets) tuples, got {type(batch).__name__}")
