"""Turn a ``data:`` config section into train and test loaders."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import FakeData
from torchvision.transforms import v2

from warmstart.data import (TORCHVISION_SETS, InMemoryLoader, build_augmentation, dataset_tensors, digits,
                            few_shot_split, image_folder_splits, mnist5k, torchvision_splits)
from warmstart.errors import ConfigError
from warmstart.jobs.schema import DataConfig


@dataclasses.dataclass
class DataBundle:
    """Loaders and facts of one data set.

    Attributes:
        train: training batches (augmented when the config asks).
        test: evaluation batches.
        num_classes: classes.
        image_shape: ``(channels, height, width)``.
        pool: all images of the training split, also those left unlabelled by ``shots`` (a
            transfer set for distillation); ``None`` for torchvision and folder sets.
        fill: the blank-pixel value used by augmentation.
    """

    train: Any
    test: Any
    num_classes: int
    image_shape: tuple[int, ...]
    pool: torch.Tensor | None
    fill: float


def build_data(cfg: DataConfig, seed: int = 0) -> DataBundle:
    """Build the loaders of ``cfg``; training order is seeded by ``seed``.

    Bundled sets (``mnist5k``, ``digits``) and ``fake`` live in memory (:class:`InMemoryLoader`
    with batched augmentation); torchvision and folder sets use a ``DataLoader`` with per-sample
    torchvision ``v2`` augmentation.
    """
    if cfg.name in ("mnist5k", "digits", "fake"):
        return _in_memory(cfg, seed)
    if cfg.shots is not None:
        raise ConfigError(f"data.shots works with the bundled sets (mnist5k, digits), not '{cfg.name}'")
    augment = build_augmentation(cfg.augment)
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
    return DataBundle(train, test, classes, shape, None, 0.0)


def _in_memory(cfg: DataConfig, seed: int) -> DataBundle:
    if cfg.name == "mnist5k":
        splits = mnist5k(seed=cfg.split_seed)
    elif cfg.name == "digits":
        splits = digits(size=cfg.size, seed=cfg.split_seed)
    else:
        return _fake(cfg, seed)
    train_set, test_set = splits.train, splits.test
    pool = splits.train.tensors[0]
    if cfg.shots is not None:
        train_set = few_shot_split(splits.train, cfg.shots, seed=cfg.split_seed)
    augment = build_augmentation(cfg.augment, fill=splits.background, batched=True)
    train = InMemoryLoader(train_set, batch_size=cfg.batch_size, shuffle=True, seed=seed, transform=augment)
    test = InMemoryLoader(test_set, batch_size=cfg.eval_batch_size)
    return DataBundle(train, test, splits.num_classes, splits.image_shape, pool, splits.background)


def _fake(cfg: DataConfig, seed: int) -> DataBundle:
    if len(cfg.fake_shape) != 3:
        raise ConfigError(f"data.fake_shape must be [channels, height, width], got {cfg.fake_shape}")
    to_tensor = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    shape = tuple(cfg.fake_shape)
    sets: list[Dataset] = [FakeData(size=n, image_size=shape, num_classes=cfg.fake_classes, transform=to_tensor,
                                    random_offset=offset) for n, offset in ((cfg.fake_size, 0), (cfg.fake_size // 2, 10**6))]
    train_x, train_y = dataset_tensors(sets[0])
    test_x, test_y = dataset_tensors(sets[1])
    augment = build_augmentation(cfg.augment, batched=True)
    return DataBundle(InMemoryLoader(train_x, train_y, batch_size=cfg.batch_size, shuffle=True, seed=seed,
                                     transform=augment),
                      InMemoryLoader(test_x, test_y, batch_size=cfg.eval_batch_size), cfg.fake_classes, shape,
                      train_x, 0.0)
