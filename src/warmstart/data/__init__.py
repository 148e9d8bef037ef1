"""Data: bundled offline real data sets, an in-memory loader, augmentation presets and torchvision sets."""

from warmstart.data.augment import PRESETS, AugmentConfig, BatchAugment, build_augmentation, is_random
from warmstart.data.bundled import (MNIST_MEAN, MNIST_STD, Splits, digits, fake_splits, few_shot_split, few_shot_splits, labels_of, mnist5k, per_class_split,
                                    upsample_digits)
from warmstart.data.loaders import InMemoryLoader, WithIndex, dataset_tensors
from warmstart.data.torchvision_sets import TORCHVISION_SETS, cache_dir, image_folder_splits, torchvision_splits

__all__ = [
    "MNIST_MEAN",
    "MNIST_STD",
    "PRESETS",
    "TORCHVISION_SETS",
    "AugmentConfig",
    "BatchAugment",
    "InMemoryLoader",
    "Splits",
    "WithIndex",
    "build_augmentation",
    "cache_dir",
    "dataset_tensors",
    "digits",
    "fake_splits",
    "few_shot_split",
    "few_shot_splits",
    "image_folder_splits",
    "is_random",
    "labels_of",
    "mnist5k",
    "per_class_split",
    "torchvision_splits",
    "upsample_digits",
]
