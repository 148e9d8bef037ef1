"""The ``data:`` section of a config: which data set, its few-shot and validation parts, batching (no torch)."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from warmstart.errors import ConfigError

DATA_SETS = ("mnist5k", "digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "image_folder", "fake")


@dataclasses.dataclass
class DataConfig:
    """Where the data comes from and how it is batched (the ``data:`` section).

    Attributes:
        name: ``mnist5k`` and ``digits`` ship inside packages (offline); ``mnist``,
            ``fashion_mnist``, ``cifar10``, ``cifar100`` download through torchvision;
            ``image_folder`` reads ``root/train`` and ``root/val``; ``fake`` is random images
            (torchvision ``FakeData``) for dry runs.
        size: image side of ``digits`` (8 or 28) and ``image_folder``.
        shots: train on this many labelled examples per class, drawn from the training split
            (bundled sets only; ``None``: the whole training split). The test split is unchanged.
        batch_size: training batch size.
        eval_batch_size: evaluation batch size.
        augment: an augmentation preset name (``none``, ``digits``, ``cifar``, ``cifar_strong``) or
            a mapping of :class:`warmstart.data.AugmentConfig` fields.
        root: data folder (downloads, ``image_folder``); default ``$WARMSTART_DATA``.
        download: let torchvision download missing files.
        workers: DataLoader worker processes (torchvision and folder sets).
        split_seed: seed of the bundled sets' train/test split, the validation split and the few-shot draw.
        val_per_class: hold out this many labelled examples per class of the training split as a
            validation set (bundled and ``fake`` sets), disjoint from ``shots`` and from the test
            split: per-epoch metrics and any choice (the best method, the teacher) use it, and the
            test split is evaluated once at the end. ``None``: no validation set.
        fake_size: samples of ``fake``.
        fake_shape: ``[channels, height, width]`` of ``fake``.
        fake_classes: classes of ``fake``.
    """

    name: Literal["mnist5k", "digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "image_folder", "fake"] = "mnist5k"
    size: int = 28
    shots: int | None = None
    batch_size: int = 64
    eval_batch_size: int = 500
    augment: str | dict[str, Any] | None = None
    root: str | None = None
    download: bool = True
    workers: int = 0
    split_seed: int = 0
    val_per_class: int | None = None
    fake_size: int = 64
    fake_shape: list[int] = dataclasses.field(default_factory=lambda: [1, 28, 28])
    fake_classes: int = 10

    def __post_init__(self) -> None:
        for name in ("batch_size", "eval_batch_size", "fake_size", "fake_classes", "shots", "val_per_class"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"data.{name} must be >= 1, got {value}")
        if self.workers < 0:
            raise ConfigError(f"data.workers must be >= 0, got {self.workers}")
        if self.name == "digits" and self.size not in (8, 28):
            raise ConfigError(f"data.size of 'digits' must be 8 (the original images) or 28 (upsampled like MNIST), "
                              f"got {self.size}")
        if len(self.fake_shape) != 3 or any(side < 1 for side in self.fake_shape):
            raise ConfigError(f"data.fake_shape must be [channels, height, width] of positive sizes, got {self.fake_shape}")
