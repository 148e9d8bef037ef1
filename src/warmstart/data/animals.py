"""Animal silhouettes shipped in the ``animal-shape-mnist`` package: 10 classes of 28x28 images, read without pickle's code paths."""

from __future__ import annotations

import functools
import gzip
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from warmstart.data.bundled import Splits, _missing, _read_only, _splits
from warmstart.errors import DataError

ANIMAL_CLASSES = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")

# what a pickled numpy array needs, and nothing else: any other global in the file is refused
_ALLOWED_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                    ("numpy", "ndarray"), ("numpy", "dtype")}


class _ArraysOnly(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays and refuses every other global (so a tampered file runs no code)."""

    def find_class(self, module: str, name: str) -> type:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise DataError(f"refusing to load {module}.{name} from a data file: only numpy arrays are allowed, so "
                            "this file is not the one the package shipped (reinstall animal-shape-mnist)")
        return super().find_class(module, name)


def read_array(path: str | Path) -> np.ndarray:
    """Read one gzipped, pickled numpy array with :class:`_ArraysOnly` (never plain ``pickle.load``).

    Raises:
        DataError: the file holds anything but a numpy array, or is damaged.
    """
    try:
        with gzip.open(path, "rb") as f:
            array = _ArraysOnly(f).load()
    except (OSError, EOFError, pickle.UnpicklingError) as err:
        raise DataError(f"cannot read {path}: {err} (reinstall animal-shape-mnist)") from None
    if not isinstance(array, np.ndarray):
        raise DataError(f"{path} holds a {type(array).__name__}, not a numpy array (reinstall animal-shape-mnist)")
    return array


def animal_shapes(size: int = 28, normalize: bool = False, test_fraction: float = 0.2, seed: int = 0) -> Splits:
    """10,000 white animal silhouettes on black (``animal-shape-mnist``, MIT), 1x28x28, split by class.

    The classes are :data:`ANIMAL_CLASSES`. The package holds 284 images twice (always with the
    same label); each is kept once, so no image is both in the training and the test split
    (9,716 images remain, 812 to 1,000 per class).

    Args:
        size: image side; other than 28, images are resized (bilinear, antialiased).
        normalize: standardise with the MNIST mean and std, like :func:`digits`; the default keeps
            pixels in ``[0, 1]``, what :class:`warmstart.models.ImageInput` takes for ImageNet networks.
        test_fraction: share of each class held out for testing.
        seed: seed of the split (the same seed gives the same split everywhere).

    Raises:
        DataError: the package is not installed, or its files are not numpy arrays.

    Examples:
        >>> data = animal_shapes()  # doctest: +SKIP
        >>> len(data.train), len(data.test), data.num_classes
        (7775, 1941, 10)
    """
    x, y = _animal_arrays()
    images = torch.from_numpy(x.astype(np.float32) / 255.0).unsqueeze(1)
    if size != 28:
        if not isinstance(size, int) or size < 1:
            raise DataError(f"size must be a positive integer, got {size!r}")
        images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True,
                               align_corners=False).clamp(0, 1)
    return _splits("animal_shapes", images, y, test_fraction, seed, normalize)


@functools.lru_cache(maxsize=1)
def _animal_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The package's images and labels with exact duplicates dropped (first copy kept); read-only arrays."""
    try:
        import animal_shape_mnist
    except ImportError:
        raise _missing("animal-shape-mnist", extra="vision") from None
    folder = Path(animal_shape_mnist.__path__[0]) / "data" / "Animal Shape"
    x = read_array(folder / "animal_data_version_3.gz")
    y = read_array(folder / "animal_label_version_3.gz")
    if x.ndim != 3 or x.shape[1:] != (28, 28) or y.shape != (len(x),):
        raise DataError(f"unexpected animal-shape-mnist arrays {x.shape} / {y.shape}; expected (N, 28, 28) / (N,)")
    _, first = np.unique(x.reshape(len(x), -1), axis=0, return_index=True)
    keep = np.sort(first)
    return _read_only(np.ascontiguousarray(x[keep])), _read_only(y[keep].astype(np.int64))
