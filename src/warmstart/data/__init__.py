"""Data: bundled offline real data sets (images and text), an in-memory loader, augmentation, torchvision sets, and
loaders built from a ``data:`` config section (:func:`build_data`).

Names are imported on first use, so the loaders do not load torchvision until augmentation or a
torchvision data set is asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from warmstart._lazy import lazy_namespace

_EXPORTS = {
    **{name: "warmstart.data.animals" for name in ("ANIMAL_CLASSES", "animal_shapes")},
    **{name: "warmstart.data.augment" for name in ("PRESETS", "AugmentConfig", "BatchAugment", "build_augmentation",
                                                   "is_deterministic", "is_random", "without_augmentation")},
    **{name: "warmstart.data.build" for name in ("DataBundle", "build_data")},
    "DataConfig": "warmstart.data.config",
    **{name: "warmstart.data.bundled" for name in ("MNIST_MEAN", "MNIST_STD", "Splits", "class_subset", "digits",
                                                   "fake_splits", "few_shot_split", "few_shot_splits", "labels_of",
                                                   "mnist5k", "per_class_split", "transfer_split",
                                                   "TransferSplit", "upsample_digits")},
    **{name: "warmstart.data.loaders" for name in ("InMemoryLoader", "WithIndex", "dataset_tensors",
                                                   "dataset_without_augmentation", "rebuild_loader", "split_loader",
                                                   "subset_loader")},
    **{name: "warmstart.data.text" for name in ("CharNgramTokenizer", "PadBatch", "TextSet", "TextSplits",
                                                "TokenizedText", "labelled_split", "text_loader", "vader_lexicon")},
    **{name: "warmstart.data.torchvision_sets" for name in ("TORCHVISION_SETS", "cache_dir", "image_folder_splits",
                                                            "torchvision_splits")},
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_namespace(__name__, _EXPORTS)

if TYPE_CHECKING:
    from warmstart.data.animals import ANIMAL_CLASSES, animal_shapes
    from warmstart.data.augment import (PRESETS, AugmentConfig, BatchAugment, build_augmentation, is_deterministic,
                                        is_random, without_augmentation)
    from warmstart.data.build import DataBundle, build_data
    from warmstart.data.bundled import (MNIST_MEAN, MNIST_STD, Splits, TransferSplit, class_subset, digits,
                                        fake_splits, few_shot_split, few_shot_splits, labels_of, mnist5k,
                                        per_class_split, transfer_split, upsample_digits)
    from warmstart.data.config import DataConfig
    from warmstart.data.loaders import (InMemoryLoader, WithIndex, dataset_tensors, dataset_without_augmentation,
                                        rebuild_loader, split_loader, subset_loader)
    from warmstart.data.text import (CharNgramTokenizer, PadBatch, TextSet, TextSplits, TokenizedText, labelled_split,
                                     text_loader, vader_lexicon)
    from warmstart.data.torchvision_sets import TORCHVISION_SETS, cache_dir, image_folder_splits, torchvision_splits
