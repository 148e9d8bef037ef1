"""Model builders: plain functions returning ``nn.Module``s, and the name table the CLI uses."""

from __future__ import annotations

import inspect
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from warmstart.efficientnet import (ImageInput, efficientnet_lite, efficientnet_lite0, efficientnet_lite1,  # noqa: F401
                                    efficientnet_lite2, efficientnet_lite_input)
from warmstart.errors import ConfigError, nearest, unknown_name_error

__all__ = ["MODELS", "BasicBlock", "ImageInput", "build_model", "build_model_for", "check_model_args", "efficientnet_lite", "efficientnet_lite0",
           "efficientnet_lite1", "efficientnet_lite2", "efficientnet_lite_input", "lenet", "mlp", "resnet18_small",
           "small_cnn", "small_resnet", "torchvision_model"]


def _conv_block(in_channels: int, out_channels: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                               nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def small_cnn(num_classes: int = 10, in_channels: int = 1, width: int = 32, dropout: float = 0.1) -> nn.Sequential:
    """A three-block CNN for small images (28x28 digits, 32x32 CIFAR).

    Top-level children are the layer groups that freezing and gradual unfreezing work on:
    ``block1``, ``block2``, ``block3`` (conv-BN-ReLU, the first two with 2x2 max-pooling),
    ``pool`` (global average pooling and flatten), ``dropout`` and ``head`` (the classifier).

    Args:
        num_classes: outputs of the head.
        in_channels: image channels.
        width: channels of the first block; the next blocks double it.
        dropout: dropout before the head.

    Examples:
        >>> model = small_cnn(num_classes=10, width=16)
        >>> sum(p.numel() for p in model.parameters())
        24058
    """
    return nn.Sequential(OrderedDict(
        block1=_conv_block(in_channels, width, pool=True),
        block2=_conv_block(width, 2 * width, pool=True),
        block3=_conv_block(2 * width, 4 * width, pool=False),
        pool=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
        dropout=nn.Dropout(dropout),
        head=nn.Linear(4 * width, num_classes),
    ))


def mlp(in_features: int = 784, hidden: list[int] | tuple[int, ...] = (64,), num_classes: int = 10,
        dropout: float = 0.0) -> nn.Sequential:
    """A multilayer perceptron that flattens its input; the last layer is named ``head``.

    Examples:
        >>> sum(p.numel() for p in mlp(784, [10], 10).parameters())
        7960
    """
    layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    width = in_features
    for i, size in enumerate(hidden, start=1):
        layers[f"fc{i}"] = nn.Sequential(nn.Linear(width, size), nn.ReLU(inplace=True), nn.Dropout(dropout))
        width = size
    layers["head"] = nn.Linear(width, num_classes)
    return nn.Sequential(layers)


def lenet(num_classes: int = 10, in_channels: int = 1, image_size: int = 28, dropout: float = 0.25) -> nn.Sequential:
    """A LeNet-style CNN: two conv-ReLU-pool blocks (32 and 64 channels) and a 128-unit hidden layer.

    A classic MNIST teacher: cheap per image, but with many parameters in its dense layer.

    Examples:
        >>> sum(p.numel() for p in lenet().parameters())
        421642
    """
    side = image_size // 4
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(in_channels, 32, 3, padding=1), relu1=nn.ReLU(inplace=True), pool1=nn.MaxPool2d(2),
        conv2=nn.Conv2d(32, 64, 3, padding=1), relu2=nn.ReLU(inplace=True), pool2=nn.MaxPool2d(2),
        flatten=nn.Flatten(), dropout1=nn.Dropout(dropout), fc=nn.Linear(64 * side * side, 128),
        relu3=nn.ReLU(inplace=True), dropout2=nn.Dropout(dropout), head=nn.Linear(128, num_classes),
    ))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a shortcut (a 1x1 conv when the shape changes): ``relu(f(x) + shortcut(x))``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def small_resnet(num_classes: int = 10, in_channels: int = 1, width: int = 16, blocks: int = 1) -> nn.Sequential:
    """A ResNet for small images: a 3x3 stem and three stages of ``blocks`` residual blocks (widths w, 2w, 4w).

    Another architecture beside :func:`small_cnn` (78k parameters at width 16), for transfer
    experiments that should not depend on one architecture. Top-level children are the layer
    groups: ``stem``, ``stage1``, ``stage2``, ``stage3`` (the last two halve the resolution),
    ``pool`` and ``head``.

    Examples:
        >>> sum(p.numel() for p in small_resnet(width=16).parameters())
        77754
    """
    def stage(cin: int, cout: int, stride: int) -> nn.Sequential:
        return nn.Sequential(BasicBlock(cin, cout, stride), *(BasicBlock(cout, cout) for _ in range(blocks - 1)))

    return nn.Sequential(OrderedDict(
        stem=nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                           nn.ReLU(inplace=True)),
        stage1=stage(width, width, 1),
        stage2=stage(width, 2 * width, 2),
        stage3=stage(2 * width, 4 * width, 2),
        pool=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
        head=nn.Linear(4 * width, num_classes),
    ))


def resnet18_small(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """torchvision's ResNet-18 with a 3x3 stem and no max-pool, the usual form for 32x32 images."""
    from torchvision.models import resnet18

    model = resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def torchvision_model(name: str, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    """Any ``torchvision.models`` builder by name, without downloading weights."""
    from torchvision import models

    try:
        return models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    except ValueError:
        raise unknown_name_error("torchvision model", name, models.list_models()) from None


MODELS: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": small_cnn,
    "mlp": mlp,
    "lenet": lenet,
    "small_resnet": small_resnet,
    "resnet18_small": resnet18_small,
    "efficientnet_lite0": efficientnet_lite0,  # ImageNet weights from a package (the [vision] extra)
    "efficientnet_lite1": efficientnet_lite1,
    "efficientnet_lite2": efficientnet_lite2,
}


def check_model_args(name: str, args: Mapping[str, Any], where: str = "model") -> None:
    """Refuse what :func:`build_model` could not build, with the fix: an unknown name (the nearest of warmstart's and
    torchvision's named), an argument the builder does not take (the valid ones listed) or a negative size.

    Args:
        name: the model's name.
        args: its keyword arguments.
        where: the config section, named in the errors (``model``, ``distill.student``).

    Raises:
        ConfigError: as above.

    Examples:
        >>> check_model_args("small_cnn", {"widht": 8})
        Traceback (most recent call last):
        ...
        warmstart.errors.ConfigError: model.args: model 'small_cnn' takes no argument 'widht' (did you mean 'width'?); ...
    """
    builder = MODELS.get(name)
    if builder is None:
        from torchvision.models import list_models

        if name not in list_models():
            raise ConfigError(f"{where}.name: unknown model '{name}'{nearest(name, [*MODELS, *list_models()])}; "
                              f"warmstart's models are {', '.join(MODELS)}, and any torchvision model name works "
                              "(torchvision.models.list_models())")
        return
    accepted = inspect.signature(builder).parameters
    unknown = [key for key in args if key not in accepted]
    if unknown:
        raise ConfigError(f"{where}.args: model '{name}' takes no argument "
                          f"{', '.join(repr(key) + nearest(key, accepted) for key in unknown)}; its arguments are: "
                          f"{', '.join(accepted)}")
    for key, value in args.items():  # a width, depth or hidden size is never negative
        bad = [v for v in (value if isinstance(value, (list, tuple)) else [value])
               if isinstance(v, int) and not isinstance(v, bool) and v < 0]
        if bad:
            raise ConfigError(f"{where}.args.{key}={value}: a size of model '{name}' cannot be negative (got {bad[0]})")


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a model by name: one of :data:`MODELS`, else a torchvision model name.

    Raises:
        ConfigError: what :func:`check_model_args` refuses, or arguments the builder cannot build with.

    Examples:
        >>> build_model("small_cnn", num_classes=10, width=8).head.out_features
        10
    """
    check_model_args(name, kwargs)
    if name in MODELS:
        try:
            return MODELS[name](**kwargs)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ConfigError(f"cannot build model '{name}' with {kwargs}: {str(err).splitlines()[0][:200]}") from None
    return torchvision_model(name, **kwargs)


def build_model_for(name: str, args: Mapping[str, Any], num_classes: int, input_shape: Sequence[int],
                    seed: int | None = None, *, where: str = "model") -> nn.Module:
    """Build model ``name`` for data of ``input_shape`` with ``num_classes``, checked by one forward pass.

    ``num_classes`` and ``in_channels`` / ``in_features`` are filled in from the data unless ``args``
    sets them. The model runs once on a batch of zeros shaped like the data, so a model that cannot
    take its inputs is a clear error here rather than a traceback in the first training step.

    Args:
        name: a name of :data:`MODELS` or of torchvision's models.
        args: the builder's keyword arguments (a config's ``model.args``).
        num_classes: the data's classes.
        input_shape: one input's shape, ``(channels, height, width)``.
        seed: draw the initial weights from ``torch.manual_seed(seed)`` (``None``: as the generator stands).
        where: the config section, named in the errors (``model``, ``distill.student``).

    Raises:
        ConfigError: what :func:`check_model_args` refuses, a model that cannot take the inputs, or one that
            gives another number of outputs than ``num_classes``.

    Examples:
        >>> build_model_for("small_cnn", {"width": 4}, 10, (1, 28, 28), seed=0).head.out_features
        10
    """
    if seed is not None:
        torch.manual_seed(seed)
    check_model_args(name, args, where)
    builder = MODELS.get(name)
    accepted = inspect.signature(builder).parameters if builder is not None else {"num_classes": None}
    implied = {"num_classes": num_classes, "in_channels": input_shape[0], "in_features": math.prod(input_shape)}
    model = build_model(name, **{**{k: v for k, v in implied.items() if k in accepted}, **args})
    try:
        with torch.no_grad():
            output = model.eval()(torch.zeros(2, *input_shape))
    except RuntimeError as err:
        raise ConfigError(f"model '{name}' ({where}.args {dict(args)}) cannot take this data's inputs of shape "
                          f"{tuple(input_shape)} ({str(err).splitlines()[0][:160]}); change the model's arguments "
                          "or the data's size") from None
    model.train()
    if isinstance(output, torch.Tensor) and output.dim() == 2 and output.shape[1] != num_classes:
        raise ConfigError(f"model '{name}' gives {output.shape[1]} outputs, the data has {num_classes} classes; "
                          f"drop num_classes from {where}.args (it is filled in from the data)")
    return model
