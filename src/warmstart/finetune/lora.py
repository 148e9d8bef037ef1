"""LoRA through peft: choose target layers, inject adapters in place, save and load adapters alone, merge them."""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from warmstart.checkpoint import load_weights, save_weights
from warmstart.errors import CheckpointError, ConfigError
from warmstart.heads import find_head, head_parameter_names

TRAINABLE_BEFORE = "_warmstart_trainable_before_lora"  # parameter names add_lora found trainable
ATTRIBUTE = "warmstart_lora"  # the model attribute that holds its LoraInfo
_ADAPTABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)


@dataclasses.dataclass
class LoraInfo:
    """What :func:`add_lora` did to a model, kept on it and saved with its adapters.

    Attributes:
        r: rank of the adapters.
        alpha: scaling numerator: the update is ``(alpha / r) * B @ A``.
        dropout: dropout on the adapters' inputs.
        targets: module paths of the adapted layers.
        head: parameter names of the head, which trains in full.
        base: the base model's identity: ``name``, ``class``, ``parameters`` and ``sha256`` of its
            weights (adapters and head excluded).
    """

    r: int
    alpha: float
    dropout: float
    targets: list[str]
    head: list[str]
    base: dict[str, Any]


def require_peft() -> Any:
    """Import peft, or raise a :class:`ConfigError` that says which extra installs it."""
    try:
        import peft
    except ImportError:
        raise ConfigError("method='lora' trains LoRA adapters through the 'peft' package, which is not installed: "
                          "pip install 'warmstart[text]' (or pip install peft)") from None
    return peft


def lora_info(model: nn.Module) -> LoraInfo | None:
    """The :class:`LoraInfo` of a model with LoRA adapters, or ``None``."""
    return getattr(model, ATTRIBUTE, None)


def lora_candidates(model: nn.Module, head: str | None = None) -> list[str]:
    """Module paths of the layers LoRA can adapt: Linear, Conv1d, Conv2d (ungrouped) and GPT-2's Conv1D, not the head.

    Examples:
        >>> lora_candidates(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))
        ['0']
    """
    head_names = _head_modules(model, head)
    return [name for name, module in model.named_modules()
            if _adaptable(module) and not any(name == h or name.startswith(h + ".") for h in head_names)]


def _adaptable(module: nn.Module) -> bool:
    if isinstance(module, _ADAPTABLE):
        return getattr(module, "groups", 1) == 1  # peft cannot merge grouped (depthwise) convolutions
    return type(module).__name__ == "Conv1D" and type(module).__module__.startswith("transformers.")


def _head_modules(model: nn.Module, head: str | None) -> list[str]:
    info = find_head(model, head)
    return [info.name, *info.extra]


_WITH_PADDING_MODE: dict[type, type] = {}


def _take_padding_mode(model: nn.Module, names: Sequence[str]) -> None:
    """Let peft build adapters for a convolution class whose constructor has no ``padding_mode``.

    peft 0.22 builds a convolution's adapters as ``type(layer)(..., padding_mode=...)``, which timm's
    ``Conv2dSame`` (EfficientNet-Lite's stem) refuses. Such a target (padding ``zeros``, the only one it
    has) gets a subclass of its own class, the same in all else, whose constructor takes the argument.
    """
    modules = dict(model.named_modules())
    for name in names:
        module, cls = modules[name], type(modules[name])
        parameters = inspect.signature(cls.__init__).parameters
        if (not isinstance(module, nn.Conv2d) or module.padding_mode != "zeros" or "padding_mode" in parameters
                or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())):
            continue
        if cls not in _WITH_PADDING_MODE:
            def __init__(self: nn.Module, *args: Any, padding_mode: str = "zeros", _base: type = cls, **kwargs: Any) -> None:
                _base.__init__(self, *args, **kwargs)

            _WITH_PADDING_MODE[cls] = type(cls.__name__, (cls,), {"__init__": __init__, "__module__": cls.__module__,
                                                                  "__qualname__": cls.__qualname__})
        module.__class__ = _WITH_PADDING_MODE[cls]


def resolve_targets(model: nn.Module, targets: str | Sequence[str] = "auto", head: str | None = None) -> list[str]:
    """The module paths to adapt: ``"auto"``, or names matched exactly or as a dotted suffix (``"query"``).

    ``"auto"`` picks, in a Hugging Face transformer, the layers of its repeated blocks (attention and
    MLP projections: not the embeddings, pooler or head); in any other model (torchvision, timm,
    plain modules), every Linear and ungrouped Conv layer but the head.

    Raises:
        ConfigError: a target that names no adaptable layer, or one that is the head (the message
            lists the candidates).

    Examples:
        >>> resolve_targets(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), ["0"])
        ['0']
    """
    check_targets_option(targets)
    candidates = lora_candidates(model, head)
    if targets == "auto":
        return _auto_targets(model, candidates)
    names = [targets] if isinstance(targets, str) else list(targets)

    def matches(candidate: str, target: str) -> bool:
        return candidate == target or candidate.endswith("." + target)

    for target in names:
        if not any(matches(c, target) for c in candidates):
            raise ConfigError(_unknown_target(model, target, candidates, head))
    return [c for c in candidates if any(matches(c, t) for t in names)]  # in the model's order


def _auto_targets(model: nn.Module, candidates: list[str]) -> list[str]:
    if not candidates:
        raise ConfigError(f"{type(model).__name__} has no Linear or Conv layer besides its head for LoRA to adapt")
    if not type(model).__module__.startswith("transformers."):
        return candidates
    blocks = [name for name, module in model.named_modules() if isinstance(module, nn.ModuleList) and len(module) > 1
              and len({type(child) for child in module}) == 1]
    inside = [c for c in candidates if any(c.startswith(block + ".") for block in blocks)]
    return inside or candidates


def _unknown_target(model: nn.Module, target: str, candidates: list[str], head: str | None) -> str:
    if any(target == h or h.endswith("." + target) for h in _head_modules(model, head)):
        return (f"LoRA target '{target}' is the head, which always trains in full; leave it out of targets "
                "(the head gets no adapter)")
    leaves = sorted({c.rpartition(".")[2] for c in candidates})
    return (f"LoRA target '{target}' matches no Linear or Conv layer of {type(model).__name__}; candidates (as "
            f"suffixes): {', '.join(leaves[:30])}; for example {', '.join(candidates[:4])}. Use targets='auto' to "
            "let warmstart choose")


def base_identity(model: nn.Module, head_names: Sequence[str]) -> dict[str, Any]:
    """Name, class, parameter count and sha256 of a model's base weights: adapters and head excluded.

    The same before and after :func:`add_lora` (adapter wrappers are looked through), so an adapter
    can be checked against the model it is loaded onto.
    """
    digest, count = hashlib.sha256(), 0
    params = {_base_name(n): p for n, p in model.named_parameters() if not _is_adapter(n) and n not in set(head_names)}
    for name in sorted(params):
        tensor = params[name].detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
        count += tensor.numel()
    name = getattr(model, "name_or_path", None) or type(model).__name__
    return {"name": Path(str(name)).name, "class": type(model).__name__, "parameters": count,
            "sha256": digest.hexdigest()}


def _base_name(name: str) -> str:
    return name.replace(".base_layer.", ".")


def _is_adapter(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def add_lora(model: nn.Module, r: int = 8, alpha: float = 16, targets: str | Sequence[str] = "auto",
             dropout: float = 0.05, head: str | None = None) -> LoraInfo:
    """Inject LoRA adapters (peft) into ``model`` in place; only the adapters and the head stay trainable.

    Each target layer ``W`` becomes ``W x + (alpha / r) * B A dropout(x)`` with ``A`` (r x in) drawn
    at random and ``B`` (out x r) zero, so the model computes what it did before training. The
    model keeps its class and attributes; the adapted layers are peft's ``lora.Linear`` /
    ``lora.Conv2d`` wrappers. The head is found as :func:`warmstart.finetune.find_head` finds it.

    Args:
        model: a Hugging Face, torchvision, timm or plain model, its head already swapped for the task.
        r: rank (>= 1).
        alpha: scaling numerator (> 0).
        targets: ``"auto"`` (see :func:`resolve_targets`) or module names / dotted suffixes.
        dropout: dropout probability on the adapters' inputs, in [0, 1).
        head: module path of the head (found automatically when omitted).

    Returns:
        The :class:`LoraInfo` (also kept on the model for :func:`save_adapter` and :func:`merge_lora`).

    Raises:
        ConfigError: peft is not installed, bad options, a target that matches nothing, or a model
            that already has adapters.

    Examples:
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> info = add_lora(model, r=2, targets="auto")  # doctest: +SKIP
        >>> info.targets  # doctest: +SKIP
        ['0']
    """
    _check_options(r, alpha, dropout)
    if lora_info(model) is not None:
        raise ConfigError(f"{type(model).__name__} already has LoRA adapters (on {lora_info(model).targets[:3]} ...); "
                          "train them as they are, or merge_lora(model) first to add new ones")
    peft = require_peft()
    names = resolve_targets(model, targets, head)
    head_names = head_parameter_names(model, head)
    info = LoraInfo(r=int(r), alpha=float(alpha), dropout=float(dropout), targets=names, head=head_names,
                    base=base_identity(model, head_names))
    config = peft.LoraConfig(r=info.r, lora_alpha=info.alpha, lora_dropout=info.dropout, target_modules=names)
    trainable = [name for name, param in model.named_parameters() if param.requires_grad]  # merge_lora gives them back
    _take_padding_mode(model, names)
    peft.inject_adapter_in_model(config, model)  # in place; leaves only the adapters trainable
    model.__dict__[TRAINABLE_BEFORE] = trainable
    for name, param in model.named_parameters():
        if name in set(head_names):
            param.requires_grad_(True)
    setattr(model, ATTRIBUTE, info)
    return info


def check_lora_options(r: Any, alpha: Any, dropout: Any, targets: Any = "auto") -> None:
    """Refuse LoRA options no model could take: before any model is built or any step trained.

    Raises:
        ConfigError: ``r`` not an integer >= 1, ``alpha`` not positive, ``dropout`` outside [0, 1),
            or ``targets`` neither ``"auto"`` nor a non-empty list of module names.

    Examples:
        >>> check_lora_options(8, 16, 0.05, ["query", "value"])
    """
    _check_options(r, alpha, dropout)
    check_targets_option(targets)


def check_targets_option(targets: Any) -> None:
    """Refuse a ``targets`` option that names no layer at all (empty, or not names)."""
    names = [targets] if isinstance(targets, str) else targets
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise ConfigError(f"LoRA targets must be 'auto' or a non-empty list of module names (or dotted suffixes such "
                          f"as ['query', 'value']), got {targets!r}: with no target there is no adapter to train. Use "
                          "targets='auto' to let warmstart choose, or method='linear_probe' to train the head alone")


def _check_options(r: Any, alpha: Any, dropout: Any) -> None:
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise ConfigError(f"LoRA rank r must be an integer >= 1, got {r!r}")
    if not isinstance(alpha, (int, float)) or alpha <= 0:
        raise ConfigError(f"LoRA alpha must be a positive number (the update is scaled by alpha / r), got {alpha!r}")
    if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError(f"LoRA dropout must be in [0, 1), got {dropout!r}")


def adapter_parameter_names(model: nn.Module) -> list[str]:
    """Names of the LoRA adapter parameters (the ``lora_A``/``lora_B`` matrices) of a model."""
    return [name for name, _ in model.named_parameters() if _is_adapter(name)]


def adapter_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The adapters and the head of a LoRA model: all a LoRA checkpoint needs besides the base model.

    Raises:
        ConfigError: the model has no LoRA adapters.
    """
    info = lora_info(model)
    if info is None:
        raise ConfigError(f"{type(model).__name__} has no LoRA adapters; add them with warmstart.finetune.add_lora "
                          "(or FinetuneTrainer(method='lora'))")
    state = model.state_dict() if state_dict is None else state_dict
    keep = set(info.head)
    return {name: tensor for name, tensor in state.items() if _is_adapter(name) or name in keep}


def lora_metadata(model: nn.Module) -> dict[str, Any]:
    """The ``lora`` entry of a LoRA model's weight metadata: its :class:`LoraInfo` as plain values."""
    info = lora_info(model)
    return {} if info is None else {"lora": dataclasses.asdict(info)}


def save_adapter(model: nn.Module, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
    """Write only the adapters and the head as ``.safetensors``, with the base model's identity.

    Examples:
        >>> save_adapter(model, "adapter.safetensors")  # doctest: +SKIP
    """
    return save_weights(path, adapter_state_dict(model), {**(metadata or {}), **lora_metadata(model)})


def load_adapter(model: nn.Module, source: str | os.PathLike) -> LoraInfo:
    """Load an adapter file onto ``model``: the base it was trained on, with or without adapters yet.

    A model without adapters gets them first (the saved rank, alpha, dropout and targets). The
    adapters and the head are loaded; every other weight stays the base model's.

    Returns:
        The model's :class:`LoraInfo`.

    Raises:
        CheckpointError: not an adapter file, a base model whose weights differ from the one the
            adapter was trained on (sha256), or a head of another shape.
        ConfigError: peft is not installed.
    """
    tensors, metadata = load_weights(source)
    saved = metadata.get("lora")
    if not isinstance(saved, dict):
        raise CheckpointError(f"'{source}' holds no LoRA adapter (no 'lora' metadata); load full weights with "
                              "warmstart.finetune.load_pretrained")
    info = lora_info(model)
    base = info.base if info is not None else base_identity(model, saved["head"])
    check_same_base(saved["base"], base, f"the adapter '{source}'")
    if info is None:
        info = add_lora(model, r=saved["r"], alpha=saved["alpha"], targets=saved["targets"], dropout=saved["dropout"])
    differ = [f"{key} {getattr(info, key)!r} (the file's: {saved[key]!r})" for key in ("r", "alpha", "dropout", "targets")
              if getattr(info, key) != (float(saved[key]) if key in ("alpha", "dropout") else saved[key])]
    if differ:
        raise CheckpointError(f"the model already has LoRA adapters with other settings than the adapter '{source}': "
                              f"{'; '.join(differ)}. Its weights would compute another function under them: load it "
                              "onto the base model without adapters (it then gets the file's settings), or "
                              "merge_lora(model) first")
    own = model.state_dict()
    wrong = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in tensors.items()
             if k in own and v.shape != own[k].shape]
    missing = [k for k in tensors if k not in own]
    if wrong or missing:
        adapters = any(_is_adapter(k) for k in [*missing, *(w.split(":")[0] for w in wrong)])
        fix = ("the file's adapters sit on other layers than the model's: load it onto the base model without "
               "adapters" if adapters else "give the model the head it was trained with "
               "(warmstart.finetune.swap_head(model, num_classes=...))")
        raise CheckpointError(f"cannot load the adapter '{source}': {'; '.join((wrong + missing)[:6])}. {fix}")
    model.load_state_dict(tensors, strict=False)
    return info


def check_same_base(saved: dict[str, Any], actual: dict[str, Any], what: str) -> None:
    """Refuse ``what`` (an adapter, a LoRA run's checkpoint) on a base whose weights differ from its own base's."""
    if saved["sha256"] != actual["sha256"]:
        raise CheckpointError(
            f"{what} was trained on {saved['name']} ({saved['class']}, {saved['parameters']:,} base "
            f"parameters, sha256 {saved['sha256'][:12]}), but this model's base is {actual['name']} ({actual['class']}, "
            f"{actual['parameters']:,} parameters, sha256 {actual['sha256'][:12]}): adapters only work on the weights "
            "they were trained with. Load it onto that base model.")


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold the adapters into the base weights (``W + (alpha / r) B A``) and remove them, in place.

    The merged model is a plain model again (same class and parameter names as before
    :func:`add_lora`), computing what the adapted one did, for deployment or further training:
    the parameters that were trainable before :func:`add_lora` (every one, for a model whose
    adapters were loaded onto it) are trainable again, not left frozen as peft left the base.

    Returns:
        ``model``.

    Raises:
        ConfigError: the model has no LoRA adapters.

    Examples:
        >>> merged = merge_lora(model)  # doctest: +SKIP
    """
    if lora_info(model) is None:
        raise ConfigError(f"{type(model).__name__} has no LoRA adapters to merge")
    from peft.tuners.lora import LoraLayer

    layers = [(name, module) for name, module in model.named_modules() if isinstance(module, LoraLayer)]
    for name, layer in layers:
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, layer.get_base_layer())
    trainable = model.__dict__.pop(TRAINABLE_BEFORE, None)
    for name, param in model.named_parameters():  # peft froze the base: it trains again as it did before add_lora
        param.requires_grad_(trainable is None or name in trainable)
    for attribute in (ATTRIBUTE, "peft_config"):
        if attribute in model.__dict__:
            delattr(model, attribute)
    return model
