"""A ``data:`` config section built into loaders: training, validation and test batches and the data's facts."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset
from torchvision.datasets import FakeData
from torchvision.transforms import v2

from warmstart.config import from_dict
from warmstart.data.augment import build_augmentation
from warmstart.data.bundled import Splits, digits, mnist5k, transfer_split
from warmstart.data.config import DataConfig
from warmstart.data.loaders import InMemoryLoader, dataset_tensors
from warmstart.data.torchvision_sets import TORCHVISION_SETS, image_folder_splits, torchvision_splits
from warmstart.errors import ConfigError


IMAGE_SIZES = {"mnist": 28, "fashion_mnist": 28, "cifar10": 32, "cifar100": 32}


@dataclasses.dataclass
class DataBundle:
    """Loaders and facts of one data set.

    Attributes:
        train: training batches (augmented when the config asks).
        val: validation batches held out from the training split (``None`` without ``val_per_class``).
        test: evaluation batches of the test split.
        num_classes: classes.
        image_shape: ``(channels, height, width)``.
        pool: the training split's images that are neither validation nor test, also those left
            unlabelled by ``shots`` (a transfer set for distillation); ``None`` for torchvision
            and folder sets.
        fill: the blank-pixel value used by augmentation.
    """

    train: Any
    val: Any
    test: Any
    num_classes: int
    image_shape: tuple[int, ...]
    pool: torch.Tensor | None
    fill: float


def build_data(cfg: DataConfig | Mapping[str, Any], seed: int = 0) -> DataBundle:
    """Build the loaders of ``cfg``; training order is seeded by ``seed``.

    Bundled sets (``mnist5k``, ``digits``) and ``fake`` live in memory (:class:`InMemoryLoader`
    with batched augmentation); torchvision and folder sets use a ``DataLoader`` with per-sample
    torchvision ``v2`` augmentation.

    Args:
        cfg: the ``data:`` section, as a :class:`DataConfig` or a mapping of its keys (checked like a config file's).
        seed: seeds the training batches' order.

    Raises:
        ConfigError: an unknown key or a wrong type, or an option the data set does not support (named).

    Examples:
        >>> bundle = build_data(DataConfig(name="digits", shots=5, val_per_class=2, batch_size=10))
        >>> bundle.num_classes, bundle.image_shape, len(bundle.train.inputs), len(bundle.val.inputs)
        (10, (1, 28, 28), 50, 20)
    """
    if isinstance(cfg, Mapping):
        cfg = from_dict(DataConfig, cfg, prefix="data")
    if cfg.name in ("mnist5k", "digits", "fake"):
        return _in_memory(cfg, seed)
    for option in ("shots", "val_per_class"):
        if getattr(cfg, option) is not None:
            raise ConfigError(f"data.{option} works with the bundled sets (mnist5k, digits) and fake, not '{cfg.name}'")
    augment = build_augmentation(cfg.augment, size=cfg.size if cfg.name == "image_folder" else IMAGE_SIZES[cfg.name])
    if cfg.name == "image_folder":
        if cfg.root is None:
            raise ConfigError("data.name 'image_folder' needs data.root (a folder with train/ and val/)")
        train_set, test_set = image_folder_splits(cfg.root, image_size=cfg.size, augment=augment)
        classes = len(train_set.classes)  # type: ignore[attr-defined]
    else:
        train_set, test_set = torchvision_splits(cfg.name, cfg.root, cfg.download, augment)
        classes = TORCHVISION_SETS[cfg.name][3]
    generator = torch.Generator().manual_seed(seed)
    train = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.workers,
                       generator=generator, pin_memory=torch.cuda.is_available())
    test = DataLoader(test_set, batch_size=cfg.eval_batch_size, num_workers=cfg.workers)
    shape = tuple(test_set[0][0].shape)
    return DataBundle(train, None, test, classes, shape, None, 0.0)


def _in_memory(cfg: DataConfig, seed: int) -> DataBundle:
    splits = _splits(cfg)
    parts = transfer_split(splits.train, cfg.shots, cfg.val_per_class, seed=cfg.split_seed)
    pool = torch.cat([parts.labelled.tensors[0], parts.unlabelled])  # every training image but the validation ones
    augment = build_augmentation(cfg.augment, fill=splits.background, batched=True)
    return DataBundle(
        train=InMemoryLoader(parts.labelled, batch_size=cfg.batch_size, shuffle=True, seed=seed, transform=augment),
        val=None if parts.val is None else InMemoryLoader(parts.val, batch_size=cfg.eval_batch_size),
        test=InMemoryLoader(splits.test, batch_size=cfg.eval_batch_size),
        num_classes=splits.num_classes, image_shape=splits.image_shape, pool=pool, fill=splits.background)


def _splits(cfg: DataConfig) -> Splits:
    if cfg.name == "mnist5k":
        return mnist5k(seed=cfg.split_seed)
    if cfg.name == "digits":
        return digits(size=cfg.size, seed=cfg.split_seed)
    return _fake(cfg)


def _fake(cfg: DataConfig) -> Splits:
    to_tensor = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    shape = tuple(cfg.fake_shape)
    sets = [FakeData(size=n, image_size=shape, num_classes=cfg.fake_classes, transform=to_tensor, random_offset=offset)
            for n, offset in ((cfg.fake_size, 0), (max(1, cfg.fake_size // 2), 10**6))]
    train, test = (TensorDataset(*dataset_tensors(part)) for part in sets)
    return Splits("fake", train, test, cfg.fake_classes, normalized=False)
