"""Offline distillation: teacher logits computed once into one memory-mapped fp16 file, keyed by sample index."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from warmstart.checkpoint import atomic_path
from warmstart.errors import DataError

CACHE_FORMAT = "warmstart-teacher-logits-1"


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of a model's class and state (names, shapes, bytes): identifies a teacher."""
    digest = hashlib.sha256(type(model).__name__.encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
                      if tensor.numel() else b"")
    return digest.hexdigest()


def dataset_fingerprint(samples: Iterable[tuple[torch.Tensor, Any]], length: int) -> str:
    """SHA-256 of a data set's length and up to 16 of its samples spread over it."""
    digest = hashlib.sha256(str(length).encode())
    for x, y in samples:
        digest.update(torch.as_tensor(x).detach().cpu().contiguous().numpy().tobytes())
        digest.update(str(int(y) if not torch.is_tensor(y) or y.numel() == 1 else y.tolist()).encode())
    return digest.hexdigest()


def probe_indices(length: int, count: int = 16) -> list[int]:
    """Indices of the samples :func:`dataset_fingerprint` hashes."""
    return sorted({int(i) for i in np.linspace(0, max(length - 1, 0), num=min(count, length))})


class TeacherCache:
    """Teacher logits of every (sample, view) of a training set, in one fp16 ``.npy`` file opened as a memory map.

    Row ``index * views + view`` holds, for each teacher, the logits of view ``view`` of sample
    ``index``: the array is ``(length * views, teachers, num_classes)``. A JSON
    sidecar records the data set's length and fingerprint and the teacher's fingerprint; opening
    a cache built for another data set or teacher is an error.

    Args:
        path: the ``.npy`` file.
        logits: the memory-mapped array, shape ``(length * views, teachers, num_classes)``.
        meta: the sidecar's contents.
    """

    def __init__(self, path: Path, logits: np.ndarray, meta: dict[str, Any]):
        self.path, self.logits, self.meta = path, logits, meta
        self.views = int(meta["views"])

    @staticmethod
    def sidecar(path: Path) -> Path:
        """The JSON file beside the cache."""
        return path.with_suffix(".json")

    @classmethod
    def build(cls, path: str | os.PathLike, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
              teacher_logits: Callable[[torch.Tensor], torch.Tensor], *, length: int, views: int, num_classes: int,
              meta: dict[str, Any], teachers: int = 1) -> TeacherCache:
        """Run the teachers over ``batches`` of ``(inputs, rows)`` and write every row, atomically.

        ``teacher_logits(inputs)`` returns ``(B, teachers, num_classes)``.
        """
        path = Path(path)
        with atomic_path(path) as tmp:
            array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16,
                                              shape=(length * views, teachers, num_classes))
            filled = np.zeros(length * views, dtype=bool)
            for inputs, rows in batches:
                logits = teacher_logits(inputs).float()
                if logits.shape[-1] != num_classes:
                    raise DataError(f"teacher logits have {logits.shape[-1]} classes, the cache expects {num_classes}")
                rows_np = rows.cpu().numpy()
                array[rows_np] = logits.cpu().numpy().astype(np.float16)
                filled[rows_np] = True
            array.flush()
            del array
            if not filled.all():
                raise DataError(f"the teacher saw {int(filled.sum())} of {filled.size} (sample, view) rows; the cache "
                                "loader must cover the whole training set")
        full_meta = {"format": CACHE_FORMAT, "length": length, "views": views, "num_classes": num_classes, **meta}
        with atomic_path(cls.sidecar(path)) as tmp:
            tmp.write_text(json.dumps(full_meta, indent=1))
        return cls.open(path, expect=full_meta)

    @classmethod
    def open(cls, path: str | os.PathLike, expect: dict[str, Any]) -> TeacherCache:
        """Open an existing cache, checking it was built for the expected data set and teacher.

        Raises:
            DataError: missing sidecar, or a length, view count, data set or teacher that differs.
        """
        path = Path(path)
        sidecar = cls.sidecar(path)
        if not sidecar.exists():
            raise DataError(f"teacher cache '{path}' has no '{sidecar.name}' beside it; delete the cache to rebuild it")
        meta = json.loads(sidecar.read_text())
        for key, what in (("length", "data set length"), ("views", "number of views"),
                          ("dataset", "data set (its sample hash)"), ("teacher", "teacher (its weights hash)"),
                          ("num_classes", "number of classes")):
            if key in expect and meta.get(key) != expect[key]:
                raise DataError(f"teacher cache '{path}' was built for another {what}: {meta.get(key)!r} there, "
                                f"{expect[key]!r} now. Delete it (and its .json) to rebuild it, or pass another "
                                "cache path.")
        logits = np.load(path, mmap_mode="r")
        return cls(path, logits, meta)

    def lookup(self, rows: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Teacher logits of the given rows, ``(B, teachers, num_classes)`` float32 on ``device``."""
        picked = torch.from_numpy(np.ascontiguousarray(self.logits[rows.cpu().numpy()]))
        return picked.to(device, non_blocking=True).float()


class AugmentedViews(Dataset):
    """A fixed number of augmented views per sample, each reproducible from ``(seed, index, view)``.

    Sample ``i`` in epoch ``e`` is view ``v = (i + e) % views`` of ``dataset[i]``, augmented with
    ``transform`` under a generator seeded by ``(seed, i, v)``; the item is ``(x_view, y, i * views
    + v)``, so a teacher-logit cache keyed by that row holds the logits of exactly the view the
    student sees. ``dataset`` itself must not augment.

    Args:
        dataset: ``(x, y)`` samples without random augmentation.
        transform: the random augmentation.
        views: views per sample.
        seed: seed of the views.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> views = AugmentedViews(TensorDataset(torch.zeros(4, 3), torch.arange(4)), lambda x: x + torch.rand(3), views=2)
        >>> x, y, row = views[1]
        >>> row, torch.equal(x, views[1][0])
        (3, True)
    """

    def __init__(self, dataset: Dataset, transform: Callable[[torch.Tensor], torch.Tensor], views: int, seed: int = 0):
        if views < 1:
            raise DataError(f"views must be >= 1, got {views}")
        self.dataset, self.transform, self.views, self.seed = dataset, transform, views, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Pick the views of ``epoch`` (the Trainer calls this through the loader's ``set_epoch``)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def view(self, index: int, view: int) -> tuple[torch.Tensor, Any]:
        """View ``view`` of sample ``index``: the same tensor every time."""
        x, y = self.dataset[index][:2]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + index) * 1_009 + view)
            return self.transform(x), y

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any, int]:
        view = (index + self.epoch) % self.views
        x, y = self.view(index, view)
        return x, y, index * self.views + view
