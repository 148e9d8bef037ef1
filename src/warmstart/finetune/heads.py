"""Swap a classifier's output layer for a new task's classes, initialised explicitly."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from warmstart.errors import ConfigError
from warmstart.heads import find_head

INITS = ("normal", "zeros", "kaiming", "xavier")


@dataclasses.dataclass
class SwapInfo:
    """What :func:`swap_head` replaced, and where.

    Attributes:
        name: module path of the main head.
        old: the layer that was replaced.
        new: the new layer.
        extra: module paths of auxiliary or distillation heads replaced with it.
    """

    name: str
    old: nn.Module
    new: nn.Module
    extra: list[str] = dataclasses.field(default_factory=list)

    def __str__(self) -> str:
        text = f"replaced {self.name}: {_describe(self.old)} with {_describe(self.new)}"
        return text + (f" (and {', '.join(self.extra)})" if self.extra else "")


def _describe(layer: nn.Module) -> str:
    if isinstance(layer, nn.Linear):
        return f"Linear({layer.in_features} -> {layer.out_features})"
    if isinstance(layer, nn.Conv2d):
        return f"Conv2d({layer.in_channels} -> {layer.out_channels}, 1x1)"
    return type(layer).__name__


def init_head(layer: nn.Module, init: str = "normal") -> None:
    """Initialise a new head in place.

    ``"normal"``: weights ~ N(0, 0.01^2), bias 0 (small logits, so the pretrained features are not
    disturbed by large early gradients); ``"zeros"``: all zero (uniform first predictions);
    ``"kaiming"``: PyTorch's default ``reset_parameters``; ``"xavier"``: Xavier-uniform, bias 0.
    """
    if init not in INITS:
        raise ConfigError(f"unknown head init '{init}'; use one of {', '.join(INITS)}")
    with torch.no_grad():
        for sub in layer.modules():
            weight, bias = getattr(sub, "weight", None), getattr(sub, "bias", None)
            if not isinstance(sub, (nn.Linear, nn.Conv2d)):
                continue
            if init == "kaiming":
                sub.reset_parameters()
                continue
            if init == "normal":
                nn.init.normal_(weight, std=0.01)
            elif init == "zeros":
                nn.init.zeros_(weight)
            else:
                nn.init.xavier_uniform_(weight)
            if bias is not None:
                nn.init.zeros_(bias)


def _replacement(old: nn.Module, num_classes: int) -> nn.Module:
    weight = old.weight
    factory = {"device": weight.device, "dtype": weight.dtype}
    if isinstance(old, nn.Conv2d):
        return nn.Conv2d(old.in_channels, num_classes, 1, bias=old.bias is not None, **factory)
    return nn.Linear(old.in_features, num_classes, bias=old.bias is not None, **factory)


def _set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, child, module)


def swap_head(model: nn.Module, num_classes: int, head: str | None = None, init: str = "normal") -> SwapInfo:
    """Replace the model's output layer (and auxiliary heads) by new ones with ``num_classes`` outputs.

    The head is found by :func:`warmstart.find_head` (torchvision, timm, Hugging Face and plain
    models); ``head="path.to.module"`` overrides the search. timm models are reset with their
    own ``reset_classifier`` (both heads of distilled models); Hugging Face models also get
    ``config.num_labels`` updated. Nothing but the head changes.

    Args:
        model: the classifier, changed in place.
        num_classes: outputs of the new head (>= 1).
        head: module path of the head, overriding the search.
        init: how to initialise the new head (see :func:`init_head`).

    Returns:
        A :class:`SwapInfo` saying what was replaced where.

    Raises:
        ConfigError: ``num_classes`` < 1, a ``head`` path that does not exist, or an ambiguous head.

    Example:
        >>> from torchvision.models import resnet18
        >>> print(swap_head(resnet18(), num_classes=7))
        replaced fc: Linear(512 -> 1000) with Linear(512 -> 7)
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ConfigError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    info = find_head(model, head)
    if head is None and hasattr(model, "reset_classifier") and hasattr(model, "get_classifier"):
        return _swap_timm(model, info.name, num_classes, init)
    old = info.module
    new = _replacement(old, num_classes)
    init_head(new, init)
    _set_module(model, info.name, new)
    for path in info.extra:
        aux = model.get_submodule(path)
        replacement = _replacement(aux, num_classes)
        init_head(replacement, init)
        _set_module(model, path, replacement)
    _update_class_count(model, num_classes)
    return SwapInfo(name=info.name, old=old, new=new, extra=list(info.extra))


def _swap_timm(model: nn.Module, name: str, num_classes: int, init: str) -> SwapInfo:
    old = model.get_submodule(name)
    model.reset_classifier(num_classes)
    heads = model.get_classifier()
    heads = list(heads) if isinstance(heads, (tuple, list)) else [heads]
    for layer in heads:
        init_head(layer, init)
    info = find_head(model)
    return SwapInfo(name=info.name, old=old, new=info.module, extra=info.extra)


def _update_class_count(model: nn.Module, num_classes: int) -> None:
    """Keep the class-count attributes that torchvision and Hugging Face models carry in step."""
    for attribute in ("num_classes", "num_labels"):
        if isinstance(getattr(model, attribute, None), int):
            setattr(model, attribute, num_classes)
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "num_labels"):
        config.num_labels = num_classes


def head_parameter_names(model: nn.Module, head: str | None = None) -> list[str]:
    """Names of the parameters of the head (and auxiliary heads) that :func:`swap_head` would replace."""
    info = find_head(model, head)
    prefixes = [info.name, *info.extra]
    return [n for n, _ in model.named_parameters() if any(n == p or n.startswith(p + ".") for p in prefixes)]

