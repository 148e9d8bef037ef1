"""Freeze and unfreeze parameters by module name, keep frozen BatchNorm frozen, and list layer groups."""

from __future__ import annotations

import dataclasses
import fnmatch
import types
from collections.abc import Sequence

from torch import nn

from warmstart.errors import ConfigError

Patterns = str | Sequence[str]
_BATCHNORM = nn.modules.batchnorm._BatchNorm


def _patterns(patterns: Patterns) -> tuple[str, ...]:
    return (patterns,) if isinstance(patterns, str) else tuple(patterns)


def matches(name: str, patterns: Patterns) -> bool:
    """True when a parameter or module ``name`` is matched by a glob pattern or lies under a matched module.

    ``"layer1"`` matches ``layer1`` and ``layer1.0.conv1.weight``; ``"*.bn1"`` matches every ``bn1``.
    """
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name, p + ".*") for p in _patterns(patterns))


def _stay_in_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    """``train()`` of a frozen BatchNorm: it keeps normalising with, and not updating, its running statistics."""
    self.training = False
    return self


def freeze_batchnorm(module: nn.Module) -> None:
    """Keep a BatchNorm layer in eval mode, even through ``model.train()``."""
    module.eval()
    module.train = types.MethodType(_stay_in_eval, module)  # type: ignore[method-assign]


def unfreeze_batchnorm(module: nn.Module, training: bool = True) -> None:
    """Let a BatchNorm layer follow ``model.train()``/``eval()`` again."""
    if "train" in module.__dict__:
        del module.__dict__["train"]
    module.train(training)


def is_frozen_batchnorm(module: nn.Module) -> bool:
    """True for a BatchNorm layer held in eval mode by :func:`freeze_batchnorm`."""
    return isinstance(module, _BATCHNORM) and "train" in module.__dict__


def freeze(model: nn.Module, modules: Patterns = "*", except_: Patterns = (), train_bn: bool = False) -> list[str]:
    """Stop gradient updates to the parameters of the matched modules.

    BatchNorm layers in frozen parts also stop updating their running statistics and stay in eval
    mode through ``model.train()``, unless ``train_bn=True`` (then their affine weights train too,
    as fastai does by default).

    Args:
        model: the model, changed in place.
        modules: glob patterns of module or parameter names to freeze (``"*"``: everything).
        except_: patterns to leave trainable (e.g. ``"fc"``, ``"head"``).
        train_bn: keep BatchNorm layers training inside frozen parts.

    Returns:
        The names of the parameters frozen.

    Raises:
        ConfigError: a pattern that matches nothing.

    Examples:
        >>> from torchvision.models import resnet18
        >>> model = resnet18()
        >>> _ = freeze(model, except_="fc")
        >>> [n for n, p in model.named_parameters() if p.requires_grad]
        ['fc.weight', 'fc.bias']
    """
    _check_patterns(model, modules)
    _check_patterns(model, except_)
    frozen = []
    for name, module in model.named_modules():
        if isinstance(module, _BATCHNORM) and matches(name, modules) and not matches(name, except_):
            if train_bn:
                continue
            freeze_batchnorm(module)
    for name, param in model.named_parameters():
        if matches(name, modules) and not matches(name, except_):
            if train_bn and _owner_is_batchnorm(model, name):
                continue
            param.requires_grad_(False)
            frozen.append(name)
    return frozen


def unfreeze(model: nn.Module, modules: Patterns = "*") -> list[str]:
    """Make the parameters of the matched modules trainable again (and their BatchNorm layers).

    Returns:
        The names of the parameters unfrozen.
    """
    _check_patterns(model, modules)
    for name, module in model.named_modules():
        if is_frozen_batchnorm(module) and matches(name, modules):
            unfreeze_batchnorm(module, training=model.training)
    names = []
    for name, param in model.named_parameters():
        if matches(name, modules) and not param.requires_grad:
            param.requires_grad_(True)
            names.append(name)
    return names


def _owner_is_batchnorm(model: nn.Module, param_name: str) -> bool:
    owner = param_name.rpartition(".")[0]
    return isinstance(model.get_submodule(owner) if owner else model, _BATCHNORM)


def _check_patterns(model: nn.Module, patterns: Patterns) -> None:
    names = [n for n, _ in model.named_modules() if n] + [n for n, _ in model.named_parameters()]
    for pattern in _patterns(patterns):
        if not any(matches(n, pattern) for n in names):
            top = ", ".join(n for n, _ in model.named_children())
            raise ConfigError(f"pattern '{pattern}' matches no module of {type(model).__name__}; its top-level "
                              f"modules are: {top}")


@dataclasses.dataclass
class LayerGroup:
    """A unit of freezing and learning-rate assignment: a named set of modules, in input-to-output order."""

    name: str
    modules: list[nn.Module]

    def parameters(self) -> list[nn.Parameter]:
        """The group's parameters."""
        return [p for m in self.modules for p in m.parameters()]


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def layer_groups(model: nn.Module, groups: Sequence[Patterns] | None = None, expand: int = 4) -> list[LayerGroup]:
    """Split a model into layer groups from input to output.

    By default the groups are the top-level children that hold parameters; a child that is an
    ``nn.Sequential`` or ``nn.ModuleList`` of at least ``expand`` such children (ResNet-free
    stacks like VGG's ``features`` or a ViT's ``blocks``) is split into them. ``groups`` gives
    the groups explicitly, each a pattern or list of patterns over module names.

    Examples:
        >>> from torchvision.models import resnet18
        >>> [g.name for g in layer_groups(resnet18())]
        ['conv1', 'bn1', 'layer1', 'layer2', 'layer3', 'layer4', 'fc']
    """
    if groups is not None:
        result = []
        for spec in groups:
            _check_patterns(model, spec)
            chosen = [m for n, m in model.named_modules() if n and matches(n, spec) and not _under_chosen(n, spec)]
            result.append(LayerGroup(name=",".join(_patterns(spec)), modules=chosen))
        return result
    result = []
    for name, child in model.named_children():
        if not _has_params(child):
            continue
        inner = [(f"{name}.{n}", c) for n, c in child.named_children() if _has_params(c)]
        if isinstance(child, (nn.Sequential, nn.ModuleList)) and len(inner) >= expand:
            result += [LayerGroup(name=n, modules=[c]) for n, c in inner]
        else:
            result.append(LayerGroup(name=name, modules=[child]))
    if not result:
        raise ConfigError(f"{type(model).__name__} has no layers with parameters to group")
    return result


def _under_chosen(name: str, spec: Patterns) -> bool:
    """True when a parent of ``name`` is itself matched (so the module is already in the group)."""
    parts = name.split(".")
    return any(matches(".".join(parts[:i]), spec) for i in range(1, len(parts)))


def freeze_to(model: nn.Module, n: int, groups: list[LayerGroup] | None = None, train_bn: bool = False) -> None:
    """Freeze the first ``n`` layer groups and unfreeze the rest (``n < 0`` counts from the end, as in fastai).

    Examples:
        >>> from torchvision.models import resnet18
        >>> model = resnet18()
        >>> freeze_to(model, -1)  # everything but the last group (fc)
        >>> sorted({n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad})
        ['fc']
    """
    groups = groups if groups is not None else layer_groups(model)
    cut = n if n >= 0 else len(groups) + n
    if not 0 <= cut <= len(groups):
        raise ConfigError(f"freeze_to({n}) is out of range for {len(groups)} layer groups")
    for index, group in enumerate(groups):
        frozen = index < cut
        for module in group.modules:
            for sub in module.modules():
                is_bn = isinstance(sub, _BATCHNORM)
                if is_bn and frozen and not train_bn:
                    freeze_batchnorm(sub)
                elif is_frozen_batchnorm(sub):
                    unfreeze_batchnorm(sub, training=model.training)
                for param in sub.parameters(recurse=False):
                    param.requires_grad_(not frozen or (train_bn and is_bn))


def frozen_state(model: nn.Module) -> dict[str, list[str]]:
    """Which parameters and BatchNorm layers are frozen: what checkpoints store to resume exactly."""
    return {"parameters": [n for n, p in model.named_parameters() if not p.requires_grad],
            "batchnorm": [n for n, m in model.named_modules() if is_frozen_batchnorm(m)]}


def restore_frozen_state(model: nn.Module, state: dict[str, list[str]]) -> None:
    """Apply a :func:`frozen_state` to ``model``."""
    frozen = set(state["parameters"])
    for name, param in model.named_parameters():
        param.requires_grad_(name not in frozen)
    frozen_bn = set(state["batchnorm"])
    for name, module in model.named_modules():
        if name in frozen_bn:
            freeze_batchnorm(module)
        elif is_frozen_batchnorm(module):
            unfreeze_batchnorm(module, training=model.training)
