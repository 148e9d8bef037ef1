"""torchvision data sets for users who are online (cached downloads) and ImageFolder trees; clear errors offline."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision import datasets
from torchvision.transforms import v2

from warmstart.errors import DataError, nearest

# name -> (torchvision class, per-channel mean, per-channel std, number of classes)
TORCHVISION_SETS: dict[str, tuple[Any, tuple[float, ...], tuple[float, ...], int]] = {
    "mnist": (datasets.MNIST, (0.1307,), (0.3081,), 10),
    "fashion_mnist": (datasets.FashionMNIST, (0.2860,), (0.3530,), 10),
    "cifar10": (datasets.CIFAR10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 10),
    "cifar100": (datasets.CIFAR100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 100),
}


def cache_dir() -> Path:
    """Where downloads go: ``$WARMSTART_DATA``, else ``~/.cache/warmstart/data``."""
    return Path(os.environ.get("WARMSTART_DATA", Path.home() / ".cache" / "warmstart" / "data"))


def to_tensor(mean: tuple[float, ...], std: tuple[float, ...]) -> v2.Compose:
    """PIL image or uint8 tensor -> normalised float tensor."""
    return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])


def torchvision_splits(name: str, root: str | os.PathLike | None = None, download: bool = True,
                       augment: Callable[[Any], Any] | None = None) -> tuple[Dataset, Dataset]:
    """Train and test sets of a torchvision data set, normalised, with optional training augmentation.

    Args:
        name: ``"mnist"``, ``"fashion_mnist"``, ``"cifar10"`` or ``"cifar100"``.
        root: download/cache folder (default :func:`cache_dir`).
        download: fetch the files when they are not in ``root`` (needs internet).
        augment: random augmentation applied to training images before normalisation (e.g.
            ``build_augmentation("cifar")``).

    Returns:
        ``(train, test)`` data sets of ``(image tensor, label)``.

    Raises:
        DataError: an unknown name, or files that are missing and cannot be downloaded (offline).
    """
    if name not in TORCHVISION_SETS:
        raise DataError(f"unknown torchvision data set '{name}'{nearest(name, TORCHVISION_SETS)}; "
                        f"valid names: {', '.join(TORCHVISION_SETS)}")
    cls, mean, std, _ = TORCHVISION_SETS[name]
    folder = Path(root) if root is not None else cache_dir()
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    base = to_tensor(mean, std)
    train_tf = v2.Compose([v2.ToImage(), augment, base]) if augment is not None else base
    try:
        return (cls(str(folder), train=True, download=download, transform=train_tf),
                cls(str(folder), train=False, download=download, transform=base))
    except (OSError, RuntimeError) as err:  # URLError is an OSError; a missing set without download a RuntimeError
        _remove_empty(created)
        raise DataError(
            f"could not load {name} from '{folder}' ({type(err).__name__}: {err}). Downloading needs internet: "
            f"run once on a machine that is online (or copy the files into '{folder}'), set WARMSTART_DATA to "
            f"another cache folder, or use the offline sets warmstart.data.mnist5k() / digits()") from None


def _remove_empty(created: list[Path]) -> None:
    """Remove the folders a failed download created, deepest first, as long as they are empty."""
    for folder in created:
        for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def image_folder_splits(root: str | os.PathLike, train: str = "train", val: str = "val", image_size: int = 224,
                        augment: Callable[[Any], Any] | None = None,
                        mean: tuple[float, ...] = (0.485, 0.456, 0.406),
                        std: tuple[float, ...] = (0.229, 0.224, 0.225)) -> tuple[Dataset, Dataset]:
    """``ImageFolder`` train/val sets from ``root/train/<class>/*`` and ``root/val/<class>/*``.

    Images are resized to ``image_size`` and normalised (ImageNet statistics by default).

    Raises:
        DataError: a missing folder, or train and val with different classes.
    """
    parts = []
    for split in (train, val):
        folder = Path(root) / split
        if not folder.is_dir():
            raise DataError(f"image folder '{folder}' does not exist; expected {root}/{split}/<class name>/<images>")
        steps: list[Any] = [v2.ToImage(), v2.Resize((image_size, image_size), antialias=True)]
        if split == train and augment is not None:
            steps.append(augment)
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
        parts.append(datasets.ImageFolder(str(folder), transform=v2.Compose(steps)))
    if parts[0].classes != parts[1].classes:
        raise DataError(f"train and val folders hold different classes: {parts[0].classes} vs {parts[1].classes}")
    return parts[0], parts[1]
