"""A classifier's output layer ("head"): find it from what the model computes, and swap it for new classes."""

from __future__ import annotations

import dataclasses
import operator
from typing import Any

import torch
from torch import nn

from warmstart.errors import ConfigError, nearest

# attributes that hold the output layer in torchvision and Hugging Face models
HEAD_ATTRIBUTES = ("fc", "classifier", "head", "heads", "score", "last_linear", "logits")
# auxiliary classifiers that must follow the main head's class count
AUX_HEADS = ("aux1.fc2", "aux2.fc2", "AuxLogits.fc")
# model families whose head attributes are known exactly (their own code names the head)
FAMILIES = ("torchvision.", "transformers.")
INITS = ("normal", "default", "zeros", "kaiming", "xavier")
_SHAPE_METHODS = {"size", "dim", "numel", "type", "get_device"}  # metadata of a tensor, not its values
_SHAPE_ATTRIBUTES = {"shape", "dtype", "device", "ndim"}


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


def get_module(model: nn.Module, path: str) -> nn.Module:
    """Return the submodule at ``path``; raise a :class:`ConfigError` that lists the nearest names."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        raise ConfigError(f"the model has no module '{path}'{nearest(path, names)}; "
                          f"its top-level modules are: {', '.join(n for n, _ in model.named_children())}") from None


def find_head(model: nn.Module, head: str | None = None, example_input: Any = None) -> HeadInfo:
    """Locate the output layer of a classifier from what the model computes, not from registration order.

    In order: an explicit ``head`` path; timm's ``get_classifier()``; the head attributes of
    torchvision and Hugging Face models (``fc``, ``classifier``, ``head``, ``score``, ...), which
    their own code names; an ``nn.Sequential``'s last layer with weights. Any other model is
    traced (``torch.fx``): the head is the ``Linear`` or 1x1 ``Conv2d`` whose output reaches the
    model's output through weight-free operations (flatten, dropout, reshapes, ...). A model that
    cannot be traced is run once on ``example_input``, and the head is the layer whose output
    *is* the model's output. Several such layers (two heads) are an error listing them.

    Args:
        model: the classifier.
        head: dotted path of the head module, overriding the search.
        example_input: an input batch, used only for a model ``torch.fx`` cannot trace.

    Returns:
        A :class:`HeadInfo`.

    An explicit ``head`` must be the output layer (or hold it as its last Linear): when the traced
    model shows which layers feed its output, a module that is not one of them (the backbone, a
    hidden layer) is refused, since replacing it would break the model.

    Raises:
        ConfigError: ``head`` does not exist or is not the output layer, the model is itself a
            single output layer (no backbone), no output layer is found, or several candidates
            fit (the message lists them; pass ``head=`` to choose).

    Examples:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        >>> find_head(net).name, find_head(net).num_classes
        ('3', 10)
    """
    if not head and _is_output_layer(model):
        raise ConfigError(f"the model is itself one output layer ({_describe(model)}), with no backbone: it is all head, "
                          "so there is no head to find or replace in it. Save its weights with "
                          "warmstart.save_weights(path, model.state_dict()); to fine-tune, give it a backbone, e.g. "
                          "nn.Sequential(backbone, layer)")
    if head is not None:
        info = _named_head(model, head)
        _check_feeds_output(model, info.name, head)
        return info
    if hasattr(model, "get_classifier") and hasattr(model, "reset_classifier"):  # timm
        names = _timm_heads(model)
        if names:
            info = _named_head(model, names[0])
            info.extra = [_named_head(model, name).name for name in names[1:]]
            return info
    if type(model).__module__.startswith(FAMILIES):
        return _info(model, *_from_attributes(model))
    if type(model) is nn.Sequential:
        return _info(model, *_last_in_sequential(model))
    candidates = _heads_from_graph(model)
    if candidates is None and example_input is not None:
        candidates = _heads_from_forward(model, example_input)
    if candidates is None:
        raise ConfigError(f"cannot tell which layer of {type(model).__name__} is the head: torch.fx cannot trace its "
                          f"forward and no example input was given. Candidates: {', '.join(_linears(model)) or 'none'}; "
                          "pass head='<name>' (or example_input= a batch, to find it by running the model)")
    return _info(model, *_one(model, candidates))


def _named_head(model: nn.Module, head: str) -> HeadInfo:
    """The output layer at (or last inside) the module ``head``."""
    module = get_module(model, head)
    found = _last_output_layer(module, head)
    if found is None:
        raise ConfigError(f"module '{head}' ({type(module).__name__}) contains no Linear or 1x1 Conv2d output layer")
    return _info(model, *found)


def _check_feeds_output(model: nn.Module, name: str, head: str) -> None:
    """Refuse an explicit ``head`` whose layer ``name`` does not feed the model's output, when tracing shows which do.

    An untraceable model, or one whose output layers the trace cannot tell (a norm after the last
    Linear), is taken at its word: there ``head=`` is how the user names the head.
    """
    outputs = _heads_from_graph(model)
    if not outputs or name in outputs:
        return
    module = model.get_submodule(head)
    inside = "" if name == head else f" (its last Linear/1x1 Conv2d is '{name}')"
    raise ConfigError(f"head='{head}' names a {type(module).__name__}{inside} that is not the output layer of "
                      f"{type(model).__name__}: its output does not reach the model's output, so replacing it would "
                      f"break the model. The output layer is {' or '.join(repr(o) for o in outputs)}: pass "
                      f"head={outputs[-1]!r}, or leave head out to have it found")


def _is_output_layer(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1))


def _last_output_layer(module: nn.Module, prefix: str = "") -> tuple[str, nn.Module] | None:
    """The last ``Linear``/1x1 ``Conv2d`` inside ``module`` in registration order (or itself)."""
    if _is_output_layer(module):
        return prefix, module
    found = None
    for name, sub in module.named_modules(prefix=prefix):
        if sub is not module and _is_output_layer(sub):
            found = (name, sub)
    return found


def _linears(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if _is_output_layer(m)][-6:]


def _timm_heads(model: nn.Module) -> list[str]:
    heads = model.get_classifier()
    heads = list(heads) if isinstance(heads, (tuple, list)) else [heads]
    heads = [h for h in heads if isinstance(h, nn.Module) and any(True for _ in h.parameters())]
    return [next(name for name, sub in model.named_modules() if sub is h) for h in heads]


def _from_attributes(model: nn.Module) -> tuple[str, nn.Module]:
    present = [a for a in HEAD_ATTRIBUTES if isinstance(getattr(model, a, None), nn.Module)
               and _last_output_layer(getattr(model, a), a) is not None]
    if len(present) != 1:
        listing = ", ".join(present) if present else "none of " + ", ".join(HEAD_ATTRIBUTES)
        raise ConfigError(f"several modules could be the head: {listing}; pass head='<name>' to choose"
                          if present else f"cannot find the head of {type(model).__name__} ({listing}); pass head='<name>'")
    return _last_output_layer(getattr(model, present[0]), present[0])  # type: ignore[return-value]


def _last_in_sequential(model: nn.Sequential) -> tuple[str, nn.Module]:
    with_weights = [(name, m) for name, m in model.named_children() if any(True for _ in m.parameters())]
    found = _last_output_layer(with_weights[-1][1], with_weights[-1][0]) if with_weights else None
    if found is None:
        raise ConfigError("the Sequential's last layer with weights holds no Linear or 1x1 Conv2d; pass head='<name>'")
    return found


def _one(model: nn.Module, candidates: list[str]) -> tuple[str, nn.Module]:
    if len(candidates) == 1:
        return candidates[0], model.get_submodule(candidates[0])
    if candidates:
        raise ConfigError(f"several modules could be the head of {type(model).__name__} (each feeds its output): "
                          f"{', '.join(candidates)}; pass head='<name>' to choose")
    raise ConfigError(f"cannot tell which layer of {type(model).__name__} is the head: no Linear or 1x1 Conv2d feeds its "
                      f"output through weight-free operations. Candidates: {', '.join(_linears(model)) or 'none'}; "
                      "pass head='<name>'")


def _heads_from_graph(model: nn.Module) -> list[str] | None:
    """Output layers whose results reach the traced model's output through weight-free steps (``None``: untraceable)."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # noqa: BLE001  (fx raises many kinds of errors on dynamic code)
        return None
    modules = dict(model.named_modules())
    output = next(node for node in graph.nodes if node.op == "output")
    found: list[str] = []
    stack, seen = list(output.all_input_nodes), set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if node.op == "call_module":
            module = modules[node.target]
            if _is_output_layer(module):
                found.append(node.target)
                continue
            if any(True for _ in module.parameters()):
                continue  # a layer with weights (a norm) after the last Linear: not a plain head
        elif node.op not in ("call_function", "call_method") or _is_metadata(node):
            continue
        stack.extend(node.all_input_nodes)
    return sorted(found, key=list(modules).index)


def _is_metadata(node: torch.fx.Node) -> bool:
    if node.op == "call_method":
        return node.target in _SHAPE_METHODS
    return node.target is getattr and len(node.args) > 1 and node.args[1] in _SHAPE_ATTRIBUTES or \
        node.target is operator.getitem and isinstance(node.args[0], torch.fx.Node) and _is_metadata(node.args[0])


def _heads_from_forward(model: nn.Module, example_input: Any) -> list[str]:
    """Output layers whose output tensor is (a view of) one of the model's outputs, from one forward pass."""
    produced: dict[str, int] = {}
    hooks = [m.register_forward_hook(lambda mod, args, out, name=name: produced.__setitem__(name, _storage(out)))
             for name, m in model.named_modules() if _is_output_layer(m)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            outputs = model(example_input)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    returned = {_storage(t) for t in _tensors(outputs)}
    return [name for name, storage in produced.items() if storage in returned]


def _storage(tensor: Any) -> int:
    return tensor.untyped_storage().data_ptr() if isinstance(tensor, torch.Tensor) else -1


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict) or hasattr(obj, "values") and callable(obj.values):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors(v)]
    return []


def _sizes(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    return module.in_channels, module.out_channels


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
    """``{"head": name, "num_classes": n}`` for checkpoint metadata, or ``{}`` if no single head is found."""
    try:
        info = find_head(model)
    except ConfigError:
        return {}
    return {"head": info.name, "num_classes": info.num_classes}


def head_parameter_names(model: nn.Module, head: str | None = None) -> list[str]:
    """Names of the parameters of the head (and auxiliary heads) that :func:`swap_head` would replace."""
    info = find_head(model, head)
    prefixes = [info.name, *info.extra]
    return [n for n, _ in model.named_parameters() if any(n == p or n.startswith(p + ".") for p in prefixes)]


# ---------------------------------------------------------------------------------------------- swapping


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
    disturbed by large early gradients); ``"default"``: the layer's own ``reset_parameters`` (for
    ``nn.Linear``, weights and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))), the initialisation a
    model built from scratch has: the one for a no-pretraining control, which the small normal
    init slows down on random features; ``"kaiming"``: the same as ``"default"`` (its older
    name); ``"zeros"``: all zero (uniform first predictions); ``"xavier"``: Xavier-uniform, bias 0.

    Examples:
        >>> layer = nn.Linear(4, 2)
        >>> init_head(layer, "normal")
        >>> bool(layer.bias.abs().sum() == 0)
        True
    """
    if init not in INITS:
        raise ConfigError(f"unknown head init '{init}'; use one of {', '.join(INITS)}")
    with torch.no_grad():
        for sub in layer.modules():
            if not isinstance(sub, (nn.Linear, nn.Conv2d)):
                continue
            if init in ("default", "kaiming"):
                sub.reset_parameters()
                continue
            {"normal": lambda w: nn.init.normal_(w, std=0.01), "zeros": nn.init.zeros_,
             "xavier": nn.init.xavier_uniform_}[init](sub.weight)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)


def _replacement(old: nn.Module, num_classes: int) -> nn.Module:
    factory = {"device": old.weight.device, "dtype": old.weight.dtype}
    if isinstance(old, nn.Conv2d):
        return nn.Conv2d(old.in_channels, num_classes, 1, bias=old.bias is not None, **factory)
    return nn.Linear(old.in_features, num_classes, bias=old.bias is not None, **factory)


def _set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, child, module)


def swap_head(model: nn.Module, num_classes: int, head: str | None = None, init: str = "normal",
              example_input: Any = None) -> SwapInfo:
    """Replace the model's output layer (and auxiliary heads) by new ones with ``num_classes`` outputs.

    The head is found by :func:`find_head` (torchvision, timm, Hugging Face and plain models,
    from what the model computes); ``head="path.to.module"`` overrides the search. timm models
    are reset with their own ``reset_classifier`` (both heads of distilled models); Hugging Face
    models also get ``config.num_labels`` updated. Nothing but the head changes.

    Args:
        model: the classifier, changed in place.
        num_classes: outputs of the new head (>= 1).
        head: module path of the head, overriding the search.
        init: how to initialise the new head (see :func:`init_head`).
        example_input: an input batch, to find the head of a model ``torch.fx`` cannot trace.

    Returns:
        A :class:`SwapInfo` saying what was replaced where.

    Raises:
        ConfigError: ``num_classes`` < 1, a ``head`` path that does not exist, or an ambiguous head.

    Examples:
        >>> from torchvision.models import resnet18
        >>> print(swap_head(resnet18(), num_classes=7))
        replaced fc: Linear(512 -> 1000) with Linear(512 -> 7)
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ConfigError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    info = find_head(model, head, example_input)
    if head is None and hasattr(model, "reset_classifier") and hasattr(model, "get_classifier"):
        return _swap_timm(model, info.name, num_classes, init)
    old = info.module
    new = _replacement(old, num_classes)
    init_head(new, init)
    _set_module(model, info.name, new)
    for path in info.extra:
        replacement = _replacement(model.get_submodule(path), num_classes)
        init_head(replacement, init)
        _set_module(model, path, replacement)
    _update_class_count(model, num_classes)
    return SwapInfo(name=info.name, old=old, new=new, extra=list(info.extra))


def _swap_timm(model: nn.Module, name: str, num_classes: int, init: str) -> SwapInfo:
    old = model.get_submodule(name)
    model.reset_classifier(num_classes)
    heads = model.get_classifier()
    for layer in list(heads) if isinstance(heads, (tuple, list)) else [heads]:
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
