"""Save and load compressed models as safetensors: pruned shapes, int8 data and sparse masks, nothing unpickled."""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from warmstart.checkpoint import load_weights, save_weights, tensors_checksum
from warmstart.compress._deps import import_torchao_quantization
from warmstart.compress._graph_codec import decode_graph, encode_graph
from warmstart.compress._layers import (RECORD_ATTRIBUTE, compression_record, count_parameters, resize_to,
                                        tensor_shapes)
from warmstart.compress._prune_checks import tie_parameters, tied_parameters
from warmstart.compress._pt2e import CompiledInt8Model
from warmstart.compress._quantize import EAGER_MODE, TORCHAO_MODES, _apply
from warmstart.compress._sparsity import has_masks
from warmstart.errors import CheckpointError, ConfigError

FORMAT = "warmstart-compressed-1"
GRAPH_FORMAT = "warmstart-graph-1"  # an int8-static model: its graph's nodes as JSON, the tensors they read
_SEPARATOR = "::"  # key::part names the pieces of one tensor; module names never contain it


def save_compressed(model: nn.Module, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> Path:
    """Write a pruned, sparsified and/or int8 model as ``.safetensors``, with what rebuilding it needs.

    Every tensor's shape is recorded, so :func:`load_compressed` rebuilds a pruned architecture
    from the original builder. int8 weights are stored as their int8 data and scales (about 4x
    smaller than float32); a tensor with many zeros as a bit mask plus its non-zero values, when
    that is smaller. No Python object is pickled. The sha256 of the stored tensors is kept in the
    metadata, so :func:`load_compressed` notices a file changed or damaged after it was written.

    An ``"int8-static"`` model (from :func:`quantize` or :func:`convert_qat`) is a graph, not a
    builder's architecture: it is stored as data, its nodes as JSON in the metadata and the tensors
    they read (int8 weights, scales, zero points, biases) beside them, under the same sha256.
    Loading looks every operator up among torch's tensor operators (``aten``, ``prims``,
    ``quantized_decomposed``) and unpickles nothing, so a file cannot run code; the sha256 only
    notices damage (anyone who changes a file can store a new one), not who wrote it.

    Args:
        model: a model returned by :func:`prune`, :func:`sparsify`, :func:`quantize` (modes
            ``"int8-weight"``, ``"int8-dynamic"``, ``"int8-static"``), :func:`convert_qat`, or
            :func:`load_compressed`.
        path: destination file.
        metadata: more JSON-serialisable facts to store (accuracy, data set, ...).

    Returns:
        The path written.

    Raises:
        ConfigError: a :class:`QATModel` (convert it, or keep its training state in Trainer
            checkpoints), an ``"int8-dynamic-eager"`` model, a model with pruning masks still
            attached, or a model quantized by something other than :func:`quantize`.

    Examples:
        >>> from warmstart.models import mlp
        >>> from warmstart.compress import quantize
        >>> quantized, _ = quantize(mlp(784, [64], 10), "int8-weight")
        >>> save_compressed(quantized, "/tmp/mlp-int8.safetensors")
        PosixPath('/tmp/mlp-int8.safetensors')
    """
    if isinstance(model, tuple):
        raise ConfigError("save_compressed got a tuple, not a model: quantize, convert_qat and prune return (model, "
                          "report); pass the model, e.g. model, report = convert_qat(qat); save_compressed(model, path)")
    if isinstance(model, CompiledInt8Model):  # int8-static, from quantize or convert_qat
        return _save_program(model, path, metadata)
    _check_savable(model)
    tensors, encodings = {}, {}
    for key, value in model.state_dict().items():
        encodings[key] = _encode(key, value, tensors)
    record = compression_record(model)
    info = {"format": FORMAT, "record": record, "shapes": tensor_shapes(model), "encodings": encodings,
            "model_class": type(model).__name__, "parameters": count_parameters(model), "sha256": tensors_checksum(tensors)}
    return save_weights(path, tensors, {**dict(metadata or {}), "compressed": info})


def load_compressed(path: str | os.PathLike, model: nn.Module) -> nn.Module:
    """Rebuild a model saved by :func:`save_compressed` from a float model of the original architecture.

    Args:
        path: the ``.safetensors`` file.
        model: a float model built as the compressed one originally was (e.g.
            ``small_cnn(width=16)``; its weights do not matter). It is left unchanged: a copy
            is resized to the pruned shapes, quantized the same way and filled. Not read for an
            ``"int8-static"`` file, whose program holds its graph.

    Returns:
        The compressed model, outputs identical to the one saved (an ``"int8-static"`` model is
        a :class:`CompiledInt8Model` again, compiled by inductor on its first call: torchao must
        be installed).

    Raises:
        CheckpointError: a file that is not a compressed checkpoint, one whose tensor data no longer
            matches the sha256 stored at save (damaged or changed), or one saved from another
            architecture.
        ConfigError: ``model`` is already quantized.

    Examples:
        >>> from warmstart.models import mlp
        >>> from warmstart.compress import prune
        >>> pruned, _ = prune(mlp(784, [64], 10), torch.randn(1, 784), ratio=0.5)
        >>> path = save_compressed(pruned, "/tmp/mlp-pruned.safetensors")
        >>> load_compressed(path, mlp(784, [64], 10)).fc1[0].out_features  # rebuilt from the builder's model
        32
    """
    tensors, metadata = load_weights(path)
    info = metadata.get("compressed")
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise CheckpointError(f"'{path}' holds plain weights, not a model saved by save_compressed; load it with "
                              f"warmstart.finetune.load_pretrained(model, path) or model.load_state_dict")
    _check_intact(tensors, info, path)
    if info.get("program"):
        return _load_program(tensors, info, path)
    _check_float_template(model)
    rebuilt = copy.deepcopy(model)
    resize_to(rebuilt, info["shapes"])
    tie_parameters(rebuilt, tied_parameters(model))  # resizing gives each layer its own tensor
    _check_runs(rebuilt, info["record"], path)
    mode = info["record"].get("quantized", {}).get("mode")
    if mode is not None:
        rebuilt, _, _ = _apply(rebuilt, mode, None, None)
    _fill(rebuilt, tensors, info["encodings"], path)
    setattr(rebuilt, RECORD_ATTRIBUTE, info["record"])
    return rebuilt


def _save_program(model: CompiledInt8Model, path: str | os.PathLike, metadata: Mapping[str, Any] | None) -> Path:
    """Store the int8 graph as data: its nodes in the metadata, the tensors it reads beside them, checksummed."""
    graph, tensors = encode_graph(model.graph)
    record = compression_record(model)
    info = {"format": FORMAT, "record": record, "program": GRAPH_FORMAT, "graph": graph,
            "model_class": type(model).__name__, "parameters": count_parameters(model), "sha256": tensors_checksum(tensors),
            "torch": torch.__version__}
    return save_weights(path, tensors, {**dict(metadata or {}), "compressed": info})


def _load_program(tensors: Mapping[str, torch.Tensor], info: Mapping[str, Any], path: Any) -> CompiledInt8Model:
    """Rebuild an int8-static model from its stored graph (compiled again on its first call); nothing is unpickled."""
    if info.get("program") != GRAPH_FORMAT:
        raise CheckpointError(f"'{path}' stores its int8 graph as a torch.export program, which loading would "
                              "deserialise with pickle's code paths (a file can then run code): warmstart no longer "
                              "reads it. Quantize the float model again with quantize(model, 'int8-static', ...) and "
                              "save it with this version")
    import_torchao_quantization()  # registers the quantize/dequantize operators the graph calls
    model = CompiledInt8Model(decode_graph(info["graph"], tensors, path))
    setattr(model, RECORD_ATTRIBUTE, info["record"])
    return model


def _check_intact(tensors: Mapping[str, torch.Tensor], info: Mapping[str, Any], path: Any) -> None:
    """Refuse a file whose tensors are not those written, or that carries no checksum to tell."""
    stored = info.get("sha256")
    if stored is None:
        raise CheckpointError(f"'{path}' carries no checksum of its tensors, so damage could not be noticed (every file "
                              "save_compressed writes has one): save the model again with save_compressed")
    if tensors_checksum(tensors) != stored:
        raise CheckpointError(f"'{path}' is damaged: its tensor data does not match the sha256 stored when it was saved "
                              f"({stored[:12]}...), so some bytes changed after it was written (a bad copy or disk). "
                              "Copy it again from its source, or save the model again with save_compressed")


def _check_savable(model: nn.Module) -> None:
    if "fake-quantized" in compression_record(model):
        raise ConfigError("a QATModel is an exported training graph with fake quantization, which load_compressed "
                          "cannot rebuild; convert it with convert_qat for inference, and keep its training state "
                          "in Trainer checkpoints (Trainer(out_dir=...)), which a fresh prepare_qat(...) model loads")
    if compression_record(model).get("quantized", {}).get("mode") == EAGER_MODE:
        raise ConfigError(f"an '{EAGER_MODE}' model holds prepacked kernels that safetensors cannot store; save the "
                          f"float (or pruned) model with save_compressed and call quantize(model, '{EAGER_MODE}') "
                          "again after loading (it needs no calibration and takes a moment)")
    if has_masks(model):
        raise ConfigError("the model still has torch pruning masks (weight_orig, weight_mask); call "
                          "warmstart.compress.remove_masks(model) first")
    quantized = any(_is_subclass(t) for t in model.state_dict().values())
    if quantized and compression_record(model).get("quantized", {}).get("mode") not in TORCHAO_MODES:
        raise ConfigError("the model holds quantized tensors that warmstart.compress.quantize did not make, so "
                          "how to rebuild them is unknown; quantize the float model with warmstart.compress.quantize")


def _check_float_template(model: nn.Module) -> None:
    if isinstance(model, CompiledInt8Model) or any(_is_subclass(t) for t in model.state_dict().values()):
        raise ConfigError("load_compressed needs a float model of the original architecture (as its builder makes "
                          "it), not a quantized one: it quantizes the copy itself")


def _is_subclass(tensor: torch.Tensor) -> bool:
    return type(tensor) is not torch.Tensor and hasattr(tensor, "__tensor_flatten__")


def _encode(key: str, value: torch.Tensor, tensors: dict[str, torch.Tensor]) -> str:
    """Add ``value``'s stored pieces to ``tensors``; return how it is encoded."""
    if _is_subclass(value):  # a torchao int8 weight: its int8 data and scales, by the subclass's own names
        names, _ = value.__tensor_flatten__()
        for name in names:
            tensors[f"{key}{_SEPARATOR}{name}"] = getattr(value, name)
        return "quantized:" + ",".join(names)
    if _sparse_is_smaller(value):
        nonzero = (value != 0).flatten().cpu()
        tensors[f"{key}{_SEPARATOR}mask"] = torch.from_numpy(np.packbits(nonzero.numpy()))
        tensors[f"{key}{_SEPARATOR}values"] = value.flatten()[nonzero.to(value.device)]
        return "sparse"
    tensors[key] = value
    return "dense"


def _sparse_is_smaller(value: torch.Tensor) -> bool:
    if not value.is_floating_point() or value.numel() < 64:
        return False
    mask_bytes = (value.numel() + 7) // 8
    return mask_bytes + int((value != 0).sum()) * value.element_size() < value.numel() * value.element_size()


def _decode_sparse(tensors: Mapping[str, torch.Tensor], key: str, like: torch.Tensor) -> torch.Tensor:
    nonzero = np.unpackbits(tensors[f"{key}{_SEPARATOR}mask"].numpy(), count=like.numel()).astype(bool)
    dense = torch.zeros(like.numel(), dtype=like.dtype)
    dense[torch.from_numpy(nonzero)] = tensors[f"{key}{_SEPARATOR}values"].to(like.dtype)
    return dense.reshape(like.shape)


@torch.no_grad()
def _fill(model: nn.Module, tensors: Mapping[str, torch.Tensor], encodings: Mapping[str, str], path: Any) -> None:
    """Copy the stored tensors into ``model``'s own (int8 pieces into the quantized weights' pieces)."""
    state = model.state_dict()
    if set(state) != set(encodings):
        missing, extra = sorted(set(state) - set(encodings)), sorted(set(encodings) - set(state))
        raise CheckpointError(f"'{path}' does not match the rebuilt model: missing {missing[:5]}, unexpected "
                              f"{extra[:5]}; build the model as the compressed one originally was")
    for key, target in state.items():
        encoding = encodings[key]
        if encoding.startswith("quantized:"):
            for name in encoding.split(":", 1)[1].split(","):
                getattr(target, name).copy_(tensors[f"{key}{_SEPARATOR}{name}"])
        elif encoding == "sparse":
            target.copy_(_decode_sparse(tensors, key, target))
        else:
            target.copy_(tensors[key])


def _check_runs(model: nn.Module, record: Mapping[str, Any], path: Any) -> None:
    """Run a pruned architecture once on zeros shaped like the example input, to fail here rather than later."""
    shapes = record.get("pruned", {}).get("example_input_shapes")
    if not shapes:
        return
    dtypes = record["pruned"].get("example_input_dtypes") or ["torch.float32"] * len(shapes)
    inputs = [torch.zeros(shape, dtype=getattr(torch, dtype.removeprefix("torch.")))
              for shape, dtype in zip(shapes, dtypes)]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(*inputs)
    except Exception as err:  # whatever the forward raises means the rebuilt widths do not fit together
        raise CheckpointError(f"the pruned architecture rebuilt from '{path}' does not run ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:200]}); a layer type whose width attributes "
                              f"warmstart.compress cannot resize is involved") from err
    finally:
        model.train(was_training)
