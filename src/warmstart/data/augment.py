"""Augmentation presets from config: torchvision ``transforms.v2`` per sample, or one batched affine on the device."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from warmstart.errors import ConfigError


@dataclasses.dataclass
class AugmentConfig:
    """Random augmentation (the ``augment:`` section of a config); zero turns a transform off.

    Attributes:
        crop_padding: pad by this many pixels and crop back at a random position (CIFAR-style).
        flip: probability of a horizontal flip (keep 0 for digits and text).
        rotation: maximum rotation in degrees.
        translate: maximum shift as a fraction of the image side.
        scale: maximum zoom in or out as a fraction (0.1: between 0.9x and 1.1x).
        brightness: colour-jitter brightness strength (images in ``[0, 1]``).
        contrast: colour-jitter contrast strength.
        saturation: colour-jitter saturation strength (RGB only; per-sample transforms only).
        hue: colour-jitter hue strength (RGB only; per-sample transforms only).
    """

    crop_padding: int = 0
    flip: float = 0.0
    rotation: float = 0.0
    translate: float = 0.0
    scale: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.flip <= 1:
            raise ConfigError(f"augment.flip is a probability in [0, 1], got {self.flip}")
        for name in ("crop_padding", "rotation", "translate", "scale", "brightness", "contrast", "saturation", "hue"):
            if getattr(self, name) < 0:
                raise ConfigError(f"augment.{name} must be >= 0, got {getattr(self, name)}")

    @property
    def active(self) -> bool:
        """Whether any transform is on."""
        return any(getattr(self, f.name) for f in dataclasses.fields(self))


PRESETS: dict[str, AugmentConfig] = {
    "none": AugmentConfig(),
    "digits": AugmentConfig(rotation=10.0, translate=0.1, scale=0.1),
    "cifar": AugmentConfig(crop_padding=4, flip=0.5),
    "cifar_strong": AugmentConfig(crop_padding=4, flip=0.5, brightness=0.2, contrast=0.2, saturation=0.2),
}


def augment_config(spec: str | Mapping[str, Any] | AugmentConfig | None) -> AugmentConfig:
    """An :class:`AugmentConfig` from a preset name, a mapping of its fields, or ``None`` (no augmentation)."""
    from warmstart.config import from_dict

    if spec is None:
        return AugmentConfig()
    if isinstance(spec, AugmentConfig):
        return spec
    if isinstance(spec, str):
        if spec not in PRESETS:
            from warmstart.errors import nearest

            raise ConfigError(f"unknown augmentation preset '{spec}'{nearest(spec, PRESETS)}; "
                              f"valid presets: {', '.join(PRESETS)}")
        return PRESETS[spec]
    return from_dict(AugmentConfig, spec, prefix="augment")


class BatchAugment(nn.Module):
    """The geometric and brightness/contrast part of an :class:`AugmentConfig`, for a whole batch at once.

    Each sample gets its own random rotation, shift (``translate`` plus ``crop_padding`` pixels),
    zoom and flip, applied as one bilinear ``affine_grid``/``grid_sample`` on the batch's device;
    brightness and contrast scale each sample about ``fill`` and its mean. Draws from torch's
    global RNG, so a seeded run is reproducible.

    Args:
        config: the augmentation (saturation and hue are not supported here).
        fill: the value of a blank pixel (``Splits.background`` for normalised digits).
    """

    def __init__(self, config: AugmentConfig, fill: float = 0.0):
        super().__init__()
        if config.saturation or config.hue:
            raise ConfigError("batched augmentation does not do saturation or hue; set them to 0 or use "
                              "build_augmentation(..., batched=False) for torchvision's per-sample ColorJitter")
        self.config, self.fill = config, fill

    def _uniform(self, n: int, bound: float, device: torch.device) -> torch.Tensor:
        return (torch.rand(n, device=device) * 2 - 1) * bound

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg, n, device = self.config, x.shape[0], x.device
        h, w = x.shape[-2:]
        angle = self._uniform(n, math.radians(cfg.rotation), device)
        zoom = 1 + self._uniform(n, cfg.scale, device)
        flip = torch.where(torch.rand(n, device=device) < cfg.flip, -1.0, 1.0)
        shift_x = self._uniform(n, 2 * (cfg.translate + cfg.crop_padding / w), device)
        shift_y = self._uniform(n, 2 * (cfg.translate + cfg.crop_padding / h), device)
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack([torch.stack([cos * flip, -sin, shift_x], 1),
                             torch.stack([sin * flip, cos, shift_y], 1)], 1)
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        out = F.grid_sample(x - self.fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if cfg.brightness:
            out = out * (1 + self._uniform(n, cfg.brightness, device)).view(-1, 1, 1, 1)
        if cfg.contrast:
            mean = out.mean(dim=(1, 2, 3), keepdim=True)
            out = mean + (out - mean) * (1 + self._uniform(n, cfg.contrast, device)).view(-1, 1, 1, 1)
        return out + self.fill


def build_augmentation(spec: str | Mapping[str, Any] | AugmentConfig | None, fill: float = 0.0,
                       batched: bool = False, size: int | None = None) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """Build random augmentation from a preset name (see ``PRESETS``), a mapping or an :class:`AugmentConfig`.

    Args:
        spec: ``"digits"``, ``"cifar"``, ``{"rotation": 15, "flip": 0.5}``, ... (``None``/``"none"``: off).
        fill: the value of blank pixels uncovered by shifts and rotations.
        batched: return a :class:`BatchAugment` for whole batches (``InMemoryLoader(transform=...)``)
            instead of a per-sample torchvision ``v2.Compose`` (a data set's ``transform``).
        size: the image side, which a per-sample padded crop (``crop_padding``) crops back to.

    Returns:
        The transform, or ``None`` when nothing is switched on.

    Raises:
        ConfigError: an unknown preset or key (with the nearest valid one), or a per-sample padded
            crop without ``size``.

    Examples:
        >>> [type(t).__name__ for t in build_augmentation({"rotation": 15, "flip": 0.5}).transforms]
        ['RandomHorizontalFlip', 'RandomAffine']
    """
    cfg = augment_config(spec)
    if not cfg.active:
        return None
    if batched:
        return BatchAugment(cfg, fill)
    from torchvision.transforms import v2  # per-sample transforms only: importing torchvision takes seconds
    steps: list[Callable[[Any], Any]] = []
    if cfg.crop_padding:
        if size is None:
            raise ConfigError("crop_padding pads the image and crops it back to its size: pass size= the image side "
                              "(e.g. build_augmentation('cifar', size=32))")
        steps.append(v2.RandomCrop(size, padding=cfg.crop_padding, fill=fill))
    if cfg.flip:
        steps.append(v2.RandomHorizontalFlip(p=cfg.flip))
    if cfg.rotation or cfg.translate or cfg.scale:
        steps.append(v2.RandomAffine(degrees=cfg.rotation, translate=(cfg.translate,) * 2 if cfg.translate else None,
                                     scale=(1 - cfg.scale, 1 + cfg.scale) if cfg.scale else None,
                                     interpolation=v2.InterpolationMode.BILINEAR, fill=fill))
    if cfg.brightness or cfg.contrast or cfg.saturation or cfg.hue:
        steps.append(v2.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue))
    return v2.Compose(steps)


_RANDOM_NAMES = ("ColorJitter", "RandAugment", "AutoAugment", "TrivialAugmentWide", "AugMix", "ElasticTransform",
                 "GaussianNoise", "ScaleJitter", "MixUp", "CutMix")


def _steps(transform: Any) -> list[Any] | None:
    """The steps of a pipeline (torchvision's ``Compose``, an ``nn.Sequential``), or ``None`` for a single transform."""
    if isinstance(transform, nn.Sequential):
        return list(transform)
    steps = getattr(transform, "transforms", None)
    return list(steps) if isinstance(steps, (list, tuple)) else None


def _random_by_type(transform: Any) -> bool:
    name = type(transform).__name__
    return isinstance(transform, BatchAugment) or name.startswith("Random") or name in _RANDOM_NAMES


def is_random(transform: Any, probe: torch.Tensor | None = None) -> bool:
    """Whether a transform (or any step of a ``Compose`` / ``nn.Sequential``) is random augmentation.

    This is the library's one answer to "is this augmentation?", used wherever a transform must be
    left out (validation folds, the linear-probe feature cache, the teacher-logit cache). A step is
    random when it is one of torchvision's random transforms (v1 and v2) or a :class:`BatchAugment`;
    a plain function or module cannot be inspected, so with a ``probe`` batch it is also run (see
    :func:`is_deterministic`) and counts as random when its outputs change from call to call or
    depend on the rest of the batch; without a probe it counts as deterministic.

    Examples:
        >>> from torchvision.transforms import v2
        >>> is_random(v2.Compose([v2.RandomHorizontalFlip(), v2.Normalize([0.5], [0.5])]))
        True
        >>> is_random(lambda x: x + torch.rand_like(x), probe=torch.zeros(4, 3))
        True
    """
    if transform is None:
        return False
    steps = _steps(transform)
    if steps is not None:
        return any(is_random(step, probe) for step in steps)
    if _random_by_type(transform):
        return True
    return probe is not None and not is_deterministic(transform, probe)


def without_augmentation(transform: Any) -> Any:
    """The transform with its random steps left out: what evaluation and the feature and logit caches apply.

    A pipeline (``Compose`` / ``nn.Sequential``) keeps its deterministic steps in order (a resize,
    :class:`warmstart.models.ImageInput`, a normalisation), so a network still gets inputs of the
    form it expects; a random step alone becomes ``None``. What cannot be inspected is kept (see
    :func:`is_random`).

    Examples:
        >>> from torchvision.transforms import v2
        >>> kept = without_augmentation(v2.Compose([v2.RandomHorizontalFlip(), v2.Normalize([0.5], [0.5])]))
        >>> [type(step).__name__ for step in kept.transforms]
        ['Normalize']
    """
    if transform is None or _random_by_type(transform):
        return None
    steps = _steps(transform)
    if steps is None or not any(is_random(step) for step in steps):
        return transform
    kept = [step for step in (without_augmentation(step) for step in steps) if step is not None]
    if not kept:
        return None
    return nn.Sequential(*kept) if isinstance(transform, nn.Sequential) else type(transform)(kept)


def is_deterministic(transform: Callable[[torch.Tensor], torch.Tensor] | None, inputs: torch.Tensor) -> bool:
    """Whether a batched transform gives each sample the same output every time, whatever batch it is in.

    Run on a probe batch: twice under different random seeds, on the batch reversed, and on its
    first half. Only such a transform may have its outputs cached (teacher logits, features); a
    random augmentation, or one that depends on the rest of the batch (per-batch normalisation),
    may not.

    Examples:
        >>> x = torch.rand(8, 3)
        >>> is_deterministic(lambda b: (b - 0.5) / 0.2, x), is_deterministic(lambda b: b + torch.rand_like(b), x)
        (True, False)
    """
    if transform is None:
        return True

    def run(batch: torch.Tensor, seed: int) -> torch.Tensor:
        with torch.random.fork_rng(devices=[batch.device] if batch.device.type == "cuda" else []):
            torch.manual_seed(seed)
            return transform(batch)

    first = run(inputs, 1)
    half = max(1, len(inputs) // 2)
    again = (run(inputs, 2), run(inputs.flip(0), 3).flip(0), torch.cat([run(inputs[:half], 4), first[half:]]))
    return all(out.shape == first.shape and torch.allclose(out, first, rtol=1e-5, atol=1e-6) for out in again)
