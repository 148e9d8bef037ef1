"""Find a classifier's output layer ("head") in torchvision, timm, Hugging Face and plain models."""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from warmstart.errors import ConfigError, nearest

# attributes that hold the output layer, in the order torchvision, HF and most custom code use them
HEAD_ATTRIBUTES = ("fc", "classifier", "head", "heads", "score", "last_linear", "logits")
# auxiliary classifiers that must follow the main head's class count
AUX_HEADS = ("aux1.fc2", "aux2.fc2", "AuxLogits.fc")


@dataclasses.dataclass
class HeadInfo:
    """Where a model's output layer is.

    Attributes:
        name: dotted module path of the output layer (``"fc"``, ``"classifier.1"``, ``"heads.head"``).
        module: the output layer (``nn.Linear`` or a 1x1 ``nn.Conv2d``).
        in_features: inputs of the layer (features of the backbone).
        num_classes: outputs of the layer.
        extra: other heads that must change with it (auxiliary or distillation heads).
    """

    name: str
    module: nn.Module
    in_features: int
    num_classes: int
    extra: list[str] = dataclasses.field(default_factory=list)


def _is_output_layer(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1))


def _sizes(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, nn.Conv2d):
        return module.in_channels, module.out_channels
    layer = _last_output_layer(module)
    if layer is None:
        raise ConfigError(f"{type(module).__name__} holds no Linear or 1x1 Conv2d output layer")
    return _sizes(layer)


def _last_output_layer(module: nn.Module, prefix: str = "") -> tuple[str, nn.Module] | None:
    """The last ``Linear``/1x1 ``Conv2d`` inside ``module`` in registration order (or itself)."""
    if _is_output_layer(module):
        return prefix, module
    found = None
    for name, sub in module.named_modules(prefix=prefix):
        if sub is not module and _is_output_layer(sub):
            found = (name, sub)
    return found


def get_module(model: nn.Module, path: str) -> nn.Module:
    """Return the submodule at ``path``; raise a :class:`ConfigError` that lists the nearest names."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        raise ConfigError(f"the model has no module '{path}'{nearest(path, names)}; "
                          f"its top-level modules are: {', '.join(n for n, _ in model.named_children())}") from None


def _name_of(model: nn.Module, module: nn.Module) -> str:
    return next(name for name, sub in model.named_modules() if sub is module)


def find_head(model: nn.Module, head: str | None = None) -> HeadInfo:
    """Locate the output layer of a classifier.

    Search order: an explicit ``head`` path; timm's ``get_classifier()``; the usual head
    attributes (``fc``, ``classifier``, ``head``, ``heads``, ``score``, ...) taking the last Linear
    or 1x1 Conv2d inside; an ``nn.Sequential``'s last layer with weights; otherwise the last
    ``Linear`` of the model when nothing with weights is registered after it.

    Args:
        model: the classifier.
        head: dotted path of the head module, overriding the search.

    Returns:
        A :class:`HeadInfo`.

    Raises:
        ConfigError: ``head`` does not exist, no output layer is found, or several candidates
            fit (the message lists them; pass ``head=`` to choose).

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        >>> find_head(net).name, find_head(net).num_classes
        ('3', 10)
    """
    if head is not None:
        module = get_module(model, head)
        found = _last_output_layer(module, head)
        if found is None:
            raise ConfigError(f"module '{head}' ({type(module).__name__}) contains no Linear or 1x1 Conv2d output layer")
        return _info(model, *found)
    if hasattr(model, "get_classifier") and hasattr(model, "reset_classifier"):  # timm
        heads = model.get_classifier()
        heads = list(heads) if isinstance(heads, (tuple, list)) else [heads]
        names = [_name_of(model, h) for h in heads if isinstance(h, nn.Module) and any(True for _ in h.parameters())]
        if names:
            info = find_head(model, names[0])
            info.extra = [find_head(model, name).name for name in names[1:]]
            return info
    present = [a for a in HEAD_ATTRIBUTES if isinstance(getattr(model, a, None), nn.Module)
               and _last_output_layer(getattr(model, a), a) is not None]
    if len(present) > 1:
        raise ConfigError(f"several modules could be the head: {', '.join(present)}; pass head='<name>' to choose")
    if present:
        return _info(model, *_last_output_layer(getattr(model, present[0]), present[0]))
    if isinstance(model, nn.Sequential):
        with_weights = [(name, m) for name, m in model.named_children() if any(True for _ in m.parameters())]
        if with_weights:
            found = _last_output_layer(with_weights[-1][1], with_weights[-1][0])
            if found is not None:
                return _info(model, *found)
    return _info(model, *_fallback(model))


def _fallback(model: nn.Module) -> tuple[str, nn.Module]:
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"cannot find an output layer in {type(model).__name__}: it has no nn.Linear; pass head='<name>'")
    name, module = linears[-1]
    owners = [n for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
    if owners and owners[-1] != name:
        candidates = ", ".join(n for n, _ in linears[-4:])
        raise ConfigError(f"cannot tell which layer of {type(model).__name__} is the head: layers with weights are "
                          f"registered after the last Linear '{name}' (last: '{owners[-1]}'). Candidates: "
                          f"{candidates}; pass head='<name>'")
    return name, module


def _info(model: nn.Module, name: str, module: nn.Module) -> HeadInfo:
    in_features, num_classes = _sizes(module)
    extra = [a for a in AUX_HEADS if _exists(model, a)]
    return HeadInfo(name=name, module=module, in_features=in_features, num_classes=num_classes, extra=extra)


def _exists(model: nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
    except AttributeError:
        return False
    return True


def describe_head(model: nn.Module) -> dict[str, Any]:
    """``{"head": name, "num_classes": n}`` for checkpoint metadata, or ``{}`` if no head is found."""
    try:
        info = find_head(model)
    except ConfigError:
        return {}
    return {"head": info.name, "num_classes": info.num_classes}
