"""Fine-tuning methods: which layer groups train in each epoch, and at what learning rate."""

from __future__ import annotations

import dataclasses
from typing import Any

from warmstart.errors import ConfigError, nearest, unknown_name_error


@dataclasses.dataclass
class Method:
    """Base of the fine-tuning methods: a schedule of trainable backbone groups and a learning-rate policy.

    The backbone is split into layer groups (input to output); the head always trains. In each
    epoch the top :meth:`trainable` backbone groups train, the rest are frozen (their BatchNorm
    layers too). Backbone group ``i`` of ``G`` (0 = nearest the input) trains at
    ``lr * layer_decay ** (G - i)`` when ``layer_decay`` is set (timm's layer-wise decay), else
    at ``lr * backbone_lr_mult``; the head trains at ``lr``.

    Attributes:
        backbone_lr_mult: learning-rate multiplier of backbone groups.
        layer_decay: per-group decay from the top (overrides ``backbone_lr_mult``).
    """

    backbone_lr_mult: float = 1.0
    layer_decay: float | None = None
    name = "base"

    def __post_init__(self) -> None:
        if self.backbone_lr_mult <= 0:
            raise ConfigError(f"backbone_lr_mult must be positive, got {self.backbone_lr_mult}")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise ConfigError(f"layer_decay must be in (0, 1], got {self.layer_decay}")

    def trainable(self, epoch: int, num_groups: int) -> int:
        """How many backbone groups, counted from the top, train in ``epoch``."""
        return num_groups

    def lr_mult(self, index: int, num_groups: int) -> float:
        """Learning-rate multiplier of backbone group ``index`` (0 = nearest the input)."""
        if self.layer_decay is not None:
            return self.layer_decay ** (num_groups - index)
        return self.backbone_lr_mult


@dataclasses.dataclass
class LinearProbe(Method):
    """Feature extraction: the backbone stays frozen and only the head trains.

    Attributes:
        cache_features: compute the frozen backbone's features once (without augmentation) and
            train the head on them, instead of running the backbone every epoch.
    """

    cache_features: bool = True
    name = "linear_probe"

    def trainable(self, epoch: int, num_groups: int) -> int:
        return 0


@dataclasses.dataclass
class Partial(Method):
    """Freeze the first ``k`` layer groups (transferred as they are) and train the rest.

    Attributes:
        k: frozen groups from the input side.
        reinit_rest: re-initialise the unfrozen backbone groups, so that only the first ``k``
            groups carry pretrained weights (Keras-style "reuse the first layers").
    """

    k: int = 1
    reinit_rest: bool = False
    name = "partial"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.k < 0:
            raise ConfigError(f"Partial(k) needs k >= 0, got {self.k}")

    def trainable(self, epoch: int, num_groups: int) -> int:
        if self.k > num_groups:
            raise ConfigError(f"Partial(k={self.k}) asks to freeze more layer groups than the backbone has ({num_groups})")
        return num_groups - self.k


@dataclasses.dataclass
class Full(Method):
    """Everything trains, the backbone at a lower, discriminative learning rate."""

    backbone_lr_mult: float = 0.1
    name = "full"


@dataclasses.dataclass
class Gradual(Method):
    """Head first, then unfreeze backbone groups from the top (ULMFiT, Lightning's BackboneFinetuning).

    Attributes:
        head_epochs: epochs that train only the head.
        unfreeze_every: epochs between unfreezing one more group.
    """

    head_epochs: int = 1
    unfreeze_every: int = 1
    backbone_lr_mult: float = 0.1
    name = "gradual"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.head_epochs < 0 or self.unfreeze_every < 1:
            raise ConfigError("Gradual needs head_epochs >= 0 and unfreeze_every >= 1")

    def trainable(self, epoch: int, num_groups: int) -> int:
        if epoch < self.head_epochs:
            return 0
        return min(num_groups, 1 + (epoch - self.head_epochs) // self.unfreeze_every)


@dataclasses.dataclass
class LoRA(Method):
    """Low-rank adapters (LoRA, through peft): the backbone stays frozen, adapters and the head train.

    Each target layer ``W`` computes ``W x + (alpha / r) * B A dropout(x)``; only ``A`` and ``B``
    (and the head, in full) are trained, at ``lr * backbone_lr_mult``. See
    :func:`warmstart.finetune.add_lora`.

    Attributes:
        r: rank of the adapters.
        alpha: scaling numerator.
        targets: ``"auto"`` (attention and MLP layers of a transformer; Linear and Conv layers of
            other models) or module names / dotted suffixes such as ``["query", "value"]``.
        dropout: dropout on the adapters' inputs.
    """

    r: int = 8
    alpha: float = 16.0
    targets: str | list[str] = "auto"
    dropout: float = 0.05
    name = "lora"

    def trainable(self, epoch: int, num_groups: int) -> int:
        return 0


METHODS: dict[str, type[Method]] = {"linear_probe": LinearProbe, "partial": Partial, "full": Full, "gradual": Gradual,
                                    "lora": LoRA}


def build_method(spec: str | Method | dict[str, Any], lora: dict[str, Any] | None = None) -> Method:
    """A fine-tuning method from its name (with default options), a dict ``{"name": ..., **options}`` or an instance.

    ``lora`` holds the options of ``"lora"`` (``r``, ``alpha``, ``targets``, ``dropout``) as a
    separate dict, the way :class:`FinetuneTrainer` and :func:`fine_tune` take them.

    Raises:
        ConfigError: an unknown method or option, or ``lora`` options for another method.

    Examples:
        >>> build_method({"name": "gradual", "unfreeze_every": 2})
        Gradual(backbone_lr_mult=0.1, layer_decay=None, head_epochs=1, unfreeze_every=2)
        >>> build_method("lora", lora={"r": 4}).r
        4
    """
    if lora is not None:
        return _with_lora_options(spec, lora)
    if isinstance(spec, Method):
        return spec
    options: dict[str, Any] = {}
    if isinstance(spec, dict):
        options = {k: v for k, v in spec.items() if k != "name"}
        spec = spec.get("name", "")
    if spec not in METHODS:
        raise unknown_name_error("fine-tuning method", str(spec), METHODS)
    cls = METHODS[spec]
    valid = [f.name for f in dataclasses.fields(cls)]
    for key in options:
        if key not in valid:
            raise ConfigError(f"method '{spec}' has no option '{key}'{nearest(key, valid)}; options: {', '.join(valid)}")
    return cls(**options)


def _with_lora_options(spec: str | Method | dict[str, Any], lora: dict[str, Any]) -> Method:
    name = spec.name if isinstance(spec, Method) else spec.get("name") if isinstance(spec, dict) else spec
    if name != "lora" or isinstance(spec, Method):
        raise ConfigError(f"lora={lora} gives LoRA options, but the method is {spec!r}: use method='lora' with "
                          "lora={...}, or a LoRA(...) method without lora=")
    return build_method({**(spec if isinstance(spec, dict) else {"name": "lora"}), **lora})
