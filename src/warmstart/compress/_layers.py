"""Layer shapes: count parameters, list tensor shapes and layer widths, and resize layers to recorded shapes."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from warmstart.checkpoint import COMPRESSION_ATTRIBUTE
from warmstart.compress._pt2e import CompiledInt8Model
from warmstart.errors import CheckpointError, ConfigError

# the record compressing functions leave on the modules they return; save_compressed reads it
RECORD_ATTRIBUTE = COMPRESSION_ATTRIBUTE


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (shared ones once; a quantized weight counts its logical elements).

    Quantized models keep some weights outside ``parameters()``: the int8 constants of an
    ``int8-static`` graph and the packed weights of torch's eager quantized layers
    (``int8-dynamic-eager``). They are counted too, so a model and its int8 copy give the same count.

    Examples:
        >>> count_parameters(nn.Linear(3, 2))
        8
    """
    total = sum(p.numel() for p in model.parameters())
    for module in model.modules():
        if isinstance(module, CompiledInt8Model):  # its int8 weights are frozen constants of the graph
            read = {node.target for node in module.graph.graph.nodes if node.op == "get_attr"}
            total += sum(t.numel() for name, t in module.graph.state_dict().items()
                         if name in read and t.dtype == torch.int8)
        elif callable(getattr(type(module), "weight", None)):  # torch.ao's quantized layers: weight() unpacks
            bias = module.bias() if callable(getattr(type(module), "bias", None)) else None
            total += module.weight().numel() + (0 if bias is None else bias.numel())
    return total


def tensor_shapes(model: nn.Module) -> dict[str, list[int]]:
    """``{state-dict key: shape}`` of every parameter and persistent buffer (logical shapes when quantized)."""
    return {key: list(value.shape) for key, value in model.state_dict().items()}


def layer_widths(model: nn.Module) -> dict[str, tuple[int, int]]:
    """``{name: (inputs, outputs)}`` of every Linear and convolution: what structured pruning narrows."""
    widths = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            widths[name] = (module.in_features, module.out_features)
        elif isinstance(module, nn.modules.conv._ConvNd):
            widths[name] = (module.in_channels, module.out_channels)
    return widths


def module_names(model: nn.Module, items: Sequence[str | nn.Module] | str | nn.Module, argument: str) -> list[str]:
    """Names of ``items`` (modules of ``model`` or their names); an error names ``argument`` and the nearest name."""
    if isinstance(items, (str, nn.Module)):
        items = [items]
    names = {id(module): name for name, module in model.named_modules()}
    resolved = []
    for item in items:
        if isinstance(item, nn.Module):
            if id(item) not in names:
                raise ConfigError(f"{argument}: the {type(item).__name__} given is not a module of this model; pass "
                                  f"modules of the model itself, or their names")
            resolved.append(names[id(item)])
        elif isinstance(item, str) and item and item in names.values():
            resolved.append(item)
        else:
            known = [name for name in names.values() if name]
            match = difflib.get_close_matches(str(item), known, n=1)
            hint = f" (did you mean '{match[0]}'?)" if match else ""
            raise ConfigError(f"{argument}: the model has no module {item!r}{hint}; its modules include: "
                              f"{', '.join(known[:12])}")
    return resolved


def compression_record(model: nn.Module) -> dict[str, Any]:
    """What warmstart.compress did to ``model`` (``{}`` for a model it did not produce)."""
    return dict(getattr(model, RECORD_ATTRIBUTE, None) or {})


def quantized_mode(model: nn.Module) -> str | None:
    """The int8 mode ``model`` was quantized with (``"int8-weight"``, ...), or ``None`` for a float model.

    Read from the compression record, or from the model itself when it has none: torchao int8
    tensors (``"int8 (torchao)"``), PyTorch's eager quantized modules (``"int8 (torch.ao)"``), or
    a compiled int8 graph.
    """
    mode = compression_record(model).get("quantized", {}).get("mode")
    if mode is not None:
        return str(mode)
    if any(type(t) is not torch.Tensor and hasattr(t, "__tensor_flatten__") for t in model.state_dict().values()):
        return "int8 (torchao)"
    if any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in model.modules()):
        return "int8 (torch.ao)"
    if isinstance(model, CompiledInt8Model):
        return "int8-static"
    return None


def refuse_quantized(model: nn.Module, action: str, way_round: str) -> None:
    """Raise a ConfigError when ``model`` is an int8 model, or has unmerged LoRA adapters, which ``action`` (e.g.
    ``"prune"``) cannot work on.

    Args:
        model: the model given.
        action: what was asked, as the message names it.
        way_round: what to do instead (a sentence).
    """
    mode = quantized_mode(model)
    if mode is not None:
        raise ConfigError(f"cannot {action} an int8 model ({type(model).__name__} quantized '{mode}'): its weights are "
                          f"int8 data with scales, not float tensors. {way_round}")
    adapted = [name for name, module in model.named_modules() if hasattr(module, "lora_A")]
    if adapted:
        raise ConfigError(f"cannot {action} a model with unmerged LoRA adapters (on {', '.join(adapted[:3])}"
                          f"{' ...' if len(adapted) > 3 else ''}): the adapters and the base weights would be "
                          f"treated apart, and the result would not compute what the model computes. Merge them "
                          "first: warmstart.finetune.merge_lora(model)")


def add_to_record(model: nn.Module, step: str, facts: Mapping[str, Any]) -> None:
    """Note on ``model`` that ``step`` (``"pruned"``, ``"sparsified"``, ``"quantized"``) was applied, with ``facts``."""
    record = compression_record(model)
    record[step] = dict(facts)
    setattr(model, RECORD_ATTRIBUTE, record)


def resize_to(model: nn.Module, shapes: Mapping[str, list[int]]) -> list[str]:
    """Give ``model``'s layers the recorded tensor shapes (a pruned architecture), in place.

    The tensors of each resized layer are replaced by uninitialised ones of the recorded shape
    (load weights afterwards) and its size attributes (``in_features``, ``out_channels``,
    ``num_features``, ...) are updated.

    Returns:
        The names of the layers that changed.

    Raises:
        CheckpointError: the recorded tensors are not those of this architecture.
    """
    current = tensor_shapes(model)
    if set(current) != set(shapes):
        raise CheckpointError(_key_mismatch(set(current), set(shapes)))
    changed = sorted({key.rpartition(".")[0] for key in shapes if list(shapes[key]) != current[key]})
    for name in changed:
        module = model.get_submodule(name)
        _resize_tensors(module, name, shapes)
        _update_size_attributes(module)
    return changed


def _key_mismatch(model_keys: set[str], saved_keys: set[str]) -> str:
    only_saved, only_model = sorted(saved_keys - model_keys), sorted(model_keys - saved_keys)
    return (f"the checkpoint was saved from another architecture: it has tensors the model lacks "
            f"({', '.join(only_saved[:5]) or 'none'}) and lacks some the model has "
            f"({', '.join(only_model[:5]) or 'none'}). "
            f"Pass a model built by the same builder, with the same arguments, as the model that was compressed.")


def _resize_tensors(module: nn.Module, name: str, shapes: Mapping[str, list[int]]) -> None:
    prefix = f"{name}." if name else ""
    for attr, param in list(module.named_parameters(recurse=False)):
        new = torch.empty(shapes[prefix + attr], dtype=param.dtype, device=param.device)
        setattr(module, attr, nn.Parameter(new, requires_grad=param.requires_grad))
    for attr, buffer in list(module.named_buffers(recurse=False)):
        if prefix + attr in shapes:
            setattr(module, attr, torch.empty(shapes[prefix + attr], dtype=buffer.dtype, device=buffer.device))


def _update_size_attributes(module: nn.Module) -> None:
    """Make a resized layer's size attributes match its new weight (other modules only change tensors)."""
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, nn.modules.conv._ConvNd):
        _update_conv(module)
    elif isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm)):
        size = _first_dim(module, ("weight", "running_mean"))
        if isinstance(module, nn.GroupNorm):
            module.num_channels = size
        else:
            module.num_features = size
    elif isinstance(module, nn.LayerNorm) and module.weight is not None:
        module.normalized_shape = tuple(module.weight.shape)
    elif isinstance(module, nn.Embedding):
        module.num_embeddings, module.embedding_dim = module.weight.shape
    elif isinstance(module, nn.PReLU):
        module.num_parameters = module.weight.numel()


def _update_conv(conv: nn.modules.conv._ConvNd) -> None:
    # weight is (out, in / groups, *kernel), or (in, out / groups, *kernel) when transposed
    first, second = conv.weight.shape[:2]
    if conv.groups > 1 and conv.groups == conv.in_channels:  # depthwise: pruning keeps one group per input channel
        conv.groups = first if conv.transposed else first // (conv.out_channels // conv.groups)
    if conv.transposed:
        conv.in_channels, conv.out_channels = first, second * conv.groups
    else:
        conv.out_channels, conv.in_channels = first, second * conv.groups


def _first_dim(module: nn.Module, names: tuple[str, ...]) -> int:
    for attr in names:
        tensor = getattr(module, attr, None)
        if isinstance(tensor, torch.Tensor):
            return tensor.shape[0]
    raise CheckpointError(f"cannot tell the new width of {type(module).__name__}: it has no weight or running_mean")
