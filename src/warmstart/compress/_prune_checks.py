"""What structured pruning checks: models and layers torch-pruning would get wrong, and weights tied across layers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from warmstart.compress._layers import refuse_quantized
from warmstart.compress._sparsity import has_masks
from warmstart.errors import ConfigError

Example = torch.Tensor | tuple[torch.Tensor, ...]


def tied_parameters(model: nn.Module) -> list[list[str]]:
    """Groups of parameter names that are one tensor (an Embedding tied to the output Linear), each longer than one."""
    owners: dict[int, list[str]] = {}
    for name, module in model.named_modules():
        for attr, param in module.named_parameters(recurse=False):
            owners.setdefault(id(param), []).append(f"{name}.{attr}" if name else attr)
    return [names for names in owners.values() if len(names) > 1]


def keep_ties(model: nn.Module, ties: list[list[str]], pruner: Any) -> None:
    """Tie again the parameters torch-pruning replaced one by one; refuse when pruning narrowed them unequally.

    torch-pruning does not know two layers share one tensor: it prunes (and replaces) each layer's
    copy by that layer's channels. When both were cut the same way, sharing one again keeps the tie.
    """
    for names in ties:
        params = [model.get_parameter(name) for name in names]
        if all(p is params[0] for p in params):
            continue
        if all(p.shape == params[0].shape and torch.equal(p, params[0]) for p in params):
            tie_parameters(model, [names])
            continue
        shapes = ", ".join(f"{name} {tuple(p.shape)}" for name, p in zip(names, params))
        feeding = layers_feeding(pruner.DG, model, [name.rpartition(".")[0] for name in names])
        raise ConfigError(f"pruning would untie {' and '.join(names)}, which are one tensor in this model (tied "
                          f"weights): it narrows them differently ({shapes}). Keep the tie by passing in ignore= the "
                          f"layers whose outputs feed the tied dimension ({', '.join(feeding) or 'see the model'}), or "
                          f"untie them yourself before pruning if two tensors are what you want")


def tie_parameters(model: nn.Module, ties: list[list[str]]) -> None:
    """Make each group of parameter names one tensor again, in place: the first name's."""
    for names in ties:
        shared = model.get_parameter(names[0])
        for name in names[1:]:
            owner, _, attr = name.rpartition(".")
            setattr(model.get_submodule(owner), attr, shared)


def layers_feeding(graph: Any, model: nn.Module, names: list[str]) -> list[str]:
    """The other Linear/conv layers whose output channels torch-pruning's ``graph`` couples with those of ``names``."""
    module_names = {module: name for name, module in model.named_modules()}
    found: list[str] = []
    for name in names:
        module = model.get_submodule(name)
        if module not in graph.module2node:
            continue
        handler = graph.get_pruner_of_module(module)
        for prune_fn in (handler.prune_out_channels, handler.prune_in_channels):
            for dependency, _ in graph.get_pruning_group(module, prune_fn, idxs=[0]):
                target = dependency.target.module
                if (isinstance(target, (nn.Linear, nn.modules.conv._ConvNd)) and target is not module
                        and dependency.handler.__name__ == "prune_out_channels"
                        and module_names.get(target) not in (None, *found)):
                    found.append(module_names[target])
    return found


def check_model(model: nn.Module, example: Example) -> None:
    """Refuse an example input without samples, and models whose weights are not plain float tensors (int8, masked)."""
    empty = [tuple(t.shape) for t in as_tensors(example) if t.dim() == 0 or t.shape[0] == 0]
    if empty:
        raise ConfigError(f"example_input must hold at least one sample, got a tensor of shape {empty[0]}; pass a "
                          "batch the model takes (one sample is enough)")
    refuse_quantized(model, "prune", "Prune the float model, then quantize the pruned one.")
    if has_masks(model):
        raise ConfigError("the model has torch pruning masks attached (weight_orig, weight_mask, from sparsify(..., "
                          "keep_masks=True)), which structured pruning cannot resize; call "
                          "warmstart.compress.remove_masks(model) first")


def prunable_layers(model: nn.Module, ignored: Sequence[str]) -> list[tuple[str, nn.Module]]:
    """The Linear and conv layers outside the ignored modules: those whose outputs pruning may narrow."""
    return [(name, module) for name, module in model.named_modules()
            if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd))
            and not any(name == kept or name.startswith(f"{kept}.") for kept in ignored)]


def check_layers(model: nn.Module, example: Example, plan: Any) -> None:
    """Refuse what torch-pruning would get wrong: a layer applied twice, or a ``round_to`` no layer is wider than."""
    layers = prunable_layers(model, plan.ignored)
    calls = _call_counts(model, example, [module for _, module in layers])
    reused = [(name, calls[module]) for name, module in layers if calls.get(module, 0) > 1]
    if reused:
        listed = ", ".join(f"'{name}' runs {times} times" for name, times in reused)
        raise ConfigError(f"a layer applied more than once in one forward pass cannot be pruned ({listed}): its "
                          f"inputs are its own outputs, so narrowing its outputs breaks its inputs. Keep it whole "
                          f"with ignore={[name for name, _ in reused]}")
    widest = max(layers, key=lambda item: _out_width(item[1]), default=None)
    if plan.round_to is not None and widest is not None and _out_width(widest[1]) <= plan.round_to:
        raise ConfigError(f"round_to={plan.round_to} keeps channel counts multiples of {plan.round_to}, but no layer "
                          f"pruned is wider (the widest, '{widest[0]}', has {_out_width(widest[1])} outputs), so "
                          f"nothing could be removed; use a smaller round_to (e.g. 8) or round_to=None")


def _out_width(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def _call_counts(model: nn.Module, example: Example, modules: list[nn.Module]) -> dict[nn.Module, int]:
    """How many times each of ``modules`` runs in one forward pass on ``example`` (eval mode, no grad)."""
    counts: dict[nn.Module, int] = {}

    def count(module: nn.Module, *_: Any) -> None:
        counts[module] = counts.get(module, 0) + 1

    hooks = [module.register_forward_hook(count) for module in modules]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(*as_tensors(example))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return counts


def unfreeze(model: nn.Module) -> set[str]:
    """Let every parameter take gradients, in place, and return the names of those that did not.

    torch-pruning follows autograd from the output back to the layers, so a frozen layer would look
    unused; the pruned copy gets its flags back afterwards.
    """
    frozen = {name for name, param in model.named_parameters() if not param.requires_grad}
    model.requires_grad_(True)
    return frozen


def check_depthwise(model: nn.Module, graph: Any, ignored: Sequence[str]) -> None:
    """Refuse a depthwise convolution with a channel multiplier (groups == inputs < outputs) that is not kept whole.

    torch-pruning removes one output channel per removed input of a depthwise conv, which is wrong
    when each input has several outputs (it fails with an IndexError); such a layer and the layers
    feeding it must keep their channels.
    """
    for name, module in prunable_layers(model, ()):
        if not (isinstance(module, nn.modules.conv._ConvNd) and 1 < module.groups == module.in_channels
                and module.out_channels != module.in_channels):
            continue
        needed = [name, *layers_feeding(graph, model, [name])]
        if any(not any(n == kept or n.startswith(f"{kept}.") for kept in ignored) for n in needed):
            raise ConfigError(f"'{name}' is a depthwise convolution with channel multiplier "
                              f"{module.out_channels // module.in_channels} ({module.in_channels} -> "
                              f"{module.out_channels} channels, groups={module.groups}), which torch-pruning cannot "
                              f"narrow; keep it and the layers feeding it whole with ignore={needed}")


def as_tensors(example: Example) -> tuple[torch.Tensor, ...]:
    return tuple(example) if isinstance(example, (tuple, list)) else (example,)
