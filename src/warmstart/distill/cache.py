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
from warmstart.errors import CheckpointError, DataError

CACHE_FORMAT = "warmstart-teacher-logits-3"  # 3: the teachers' outputs on the probe samples are stored
_FINGERPRINT_SEED = 20_240_917
# a changed sample moves its fingerprint by far more than this share of its L1 norm; float64
# summation-order noise between the build and a training batch stays many orders below it
FINGERPRINT_RTOL = 1e-9
# a teacher changed outside its tensors (an output-scale attribute, a patched forward) moves its probe outputs by far
# more than this share of their largest magnitude; the same teacher on another device (TF32 matmuls) stays below it
PROBE_RTOL = 1e-2


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
    """SHA-256 of a data set's length and up to 16 of its samples spread over it (a quick check at open)."""
    digest = hashlib.sha256(str(length).encode())
    for x, y in samples:
        digest.update(torch.as_tensor(x).detach().cpu().contiguous().numpy().tobytes())
        digest.update(str(None if y is None else int(y) if not torch.is_tensor(y) or y.numel() == 1 else y.tolist()).encode())
    return digest.hexdigest()


def probe_indices(length: int, count: int = 16) -> list[int]:
    """Indices of the samples :func:`dataset_fingerprint` hashes."""
    return sorted({int(i) for i in np.linspace(0, max(length - 1, 0), num=min(count, length))})


class SampleFingerprint:
    """A per-sample fingerprint: a fixed random projection of the input and its L1 norm, in float64.

    ``fingerprint(x) = (<x, r>, |x|_1)`` for one random vector ``r`` per input size. Computing it
    for a batch is one matrix-vector product on the device, so every training batch can be
    compared with the fingerprints stored when the cache was built, without a host sync.

    Examples:
        >>> fp = SampleFingerprint(torch.device("cpu"))
        >>> x = torch.rand(4, 3, 8, 8)
        >>> torch.equal(fp(x), fp(x.clone()))
        True
    """

    def __init__(self, device: torch.device):
        self.device = device
        self._projections: dict[int, torch.Tensor] = {}

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """``(B, 2)`` float64: the projection and the L1 norm of each sample (what a cache stores)."""
        flat = inputs.detach().reshape(len(inputs), -1).double()
        return torch.stack([flat @ self._projection(flat.shape[1]), flat.abs().sum(1)], dim=1)

    def projection(self, inputs: torch.Tensor) -> torch.Tensor:
        """``(B,)`` float64: the projection alone, all a training batch needs against :meth:`reference` rows."""
        flat = inputs.reshape(len(inputs), -1).double()
        return flat @ self._projection(flat.shape[1])

    def _projection(self, size: int) -> torch.Tensor:
        if size not in self._projections:
            g = torch.Generator().manual_seed(_FINGERPRINT_SEED + size)
            self._projections[size] = torch.randn(size, generator=g, dtype=torch.float64).to(self.device)
        return self._projections[size]

    @staticmethod
    def reference(stored: torch.Tensor) -> torch.Tensor:
        """``(N, 2)``: stored fingerprints as ``(projection, tolerance)``, the tolerance worked out once."""
        return torch.stack([stored[:, 0], FINGERPRINT_RTOL * stored[:, 1] + 1e-12], dim=1)

    @staticmethod
    def mismatch(projection: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """The largest excess of a batch's projection distance over the tolerance (> 0: a sample changed)."""
        return ((projection - reference[:, 0]).abs() - reference[:, 1]).max()


class TeacherCache:
    """Teacher logits of every (sample, view) of a training set, in one fp16 ``.npy`` file opened as a memory map.

    Row ``index * views + view`` holds, for each teacher, the logits of view ``view`` of sample
    ``index``: the array is ``(length * views, teachers, num_classes)``. Beside it,
    ``<name>.fingerprint.npy`` holds each row's :class:`SampleFingerprint` (the trainer compares
    every training batch with it) and a JSON sidecar the data set's length and sample hash and the
    teachers' hashes; opening a cache built for another data set or teacher is an error.

    Args:
        path: the ``.npy`` file.
        logits: the memory-mapped array, shape ``(length * views, teachers, num_classes)``.
        fingerprints: ``(length * views, 2)`` float64.
        meta: the sidecar's contents.
    """

    in_memory_bytes = 512 * 2**20  # a cache up to this size is read into memory once: a lookup is then one index

    def __init__(self, path: Path, logits: np.ndarray, fingerprints: np.ndarray, meta: dict[str, Any]):
        self.path, self.logits, self.fingerprints, self.meta = path, logits, fingerprints, meta
        self.views = int(meta["views"])
        self._tables: tuple[torch.Tensor, torch.Tensor] | None = None  # (logits, references) on one device

    @staticmethod
    def sidecar(path: Path) -> Path:
        """The JSON file beside the cache."""
        return path.with_suffix(".json")

    @staticmethod
    def fingerprint_file(path: Path) -> Path:
        """The per-row fingerprints beside the cache."""
        return path.with_suffix(".fingerprint.npy")

    @classmethod
    def build(cls, path: str | os.PathLike, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
              teacher_logits: Callable[[torch.Tensor], torch.Tensor], *, length: int, views: int, num_classes: int,
              meta: dict[str, Any], teachers: int = 1, device: torch.device | str = "cpu") -> TeacherCache:
        """Run the teachers over ``batches`` of ``(inputs, rows)`` and write every row, atomically.

        ``teacher_logits(inputs)`` returns ``(B, teachers, num_classes)``.
        """
        path = Path(path)
        fingerprint = SampleFingerprint(torch.device(device))
        prints = np.zeros((length * views, 2), dtype=np.float64)
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
                prints[rows_np] = fingerprint(inputs.to(fingerprint.device)).cpu().numpy()
                filled[rows_np] = True
            array.flush()
            del array
            if not filled.all():
                raise DataError(f"the teacher saw {int(filled.sum())} of {filled.size} (sample, view) rows; the cache "
                                "loader must cover the whole training set")
        with atomic_path(cls.fingerprint_file(path)) as tmp, open(tmp, "wb") as f:
            np.save(f, prints)
        full_meta = {"format": CACHE_FORMAT, "length": length, "views": views, "num_classes": num_classes, **meta}
        with atomic_path(cls.sidecar(path)) as tmp:
            tmp.write_text(json.dumps(full_meta, indent=1))
        return cls.open(path, expect=full_meta)

    @classmethod
    def open(cls, path: str | os.PathLike, expect: dict[str, Any]) -> TeacherCache:
        """Open an existing cache, checking it was built for the expected data set and teacher.

        Raises:
            DataError: a length, view count, data set or teacher that differs.
            CheckpointError: a missing or damaged sidecar, fingerprint or logits file.
        """
        path = Path(path)
        files = [path, cls.sidecar(path), cls.fingerprint_file(path)]
        rebuild = f"delete {', '.join(str(f) for f in files)} to rebuild the cache"
        if not cls.sidecar(path).exists() or not cls.fingerprint_file(path).exists():
            raise CheckpointError(f"teacher cache '{path}' is incomplete (no {cls.sidecar(path).name} or "
                                  f"{cls.fingerprint_file(path).name} beside it): {rebuild}")
        try:
            meta = json.loads(cls.sidecar(path).read_text())
            logits = np.load(path, mmap_mode="r")
            prints = np.load(cls.fingerprint_file(path))
        except (OSError, ValueError, EOFError) as err:
            raise CheckpointError(f"teacher cache '{path}' is damaged ({type(err).__name__}: {err}): {rebuild}") from None
        if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT:
            raise CheckpointError(f"teacher cache '{path}' has another format than {CACHE_FORMAT}: {rebuild}")
        for key, what in (("length", "data set length"), ("views", "number of views"),
                          ("dataset", "data set (its sample hash)"), ("teacher", "teacher (its weights hash)"),
                          ("num_classes", "number of classes")):
            if key in expect and meta.get(key) != expect[key]:
                raise DataError(f"teacher cache '{path}' was built for another {what}: {meta.get(key)!r} there, "
                                f"{expect[key]!r} now. Pass another cache_path, or {rebuild}.")
        if "teacher_outputs" in expect:
            _check_teacher_outputs(path, meta.get("teacher_outputs"), expect["teacher_outputs"], rebuild)
        rows = meta["length"] * meta["views"]
        if logits.shape[0] != rows or prints.shape != (rows, 2):
            raise CheckpointError(f"teacher cache '{path}' holds {logits.shape[0]} rows, its sidecar says {rows}: {rebuild}")
        return cls(path, logits, prints, meta)

    def lookup(self, rows: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher logits ``(B, teachers, num_classes)`` float32 and the rows' fingerprint references ``(B, 2)``
        (:meth:`SampleFingerprint.reference`).

        A cache of at most ``in_memory_bytes`` is read onto ``device`` at the first lookup (as float32, so a lookup
        is one index on the device and no host sync); a larger one is read from the memory map batch by batch.
        """
        tables = self._tables
        if tables is None or tables[0].device != device:
            tables = self._tables = self._in_memory(device)
        if tables is not None:
            return tables[0][rows], tables[1][rows]
        picked = rows.cpu().numpy()
        logits = torch.from_numpy(np.ascontiguousarray(self.logits[picked]))
        prints = SampleFingerprint.reference(torch.from_numpy(self.fingerprints[picked]))
        return logits.to(device, non_blocking=True).float(), prints.to(device, non_blocking=True)

    def _in_memory(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
        if 2 * self.logits.nbytes > self.in_memory_bytes:  # float32 in memory: twice the file's fp16
            return None
        logits = torch.from_numpy(np.array(self.logits, dtype=np.float32)).to(device)  # a writable copy
        return logits, SampleFingerprint.reference(torch.from_numpy(self.fingerprints)).to(device)


def _check_teacher_outputs(path: Path, stored: Any, now: list[Any], rebuild: str) -> None:
    """Refuse a cache whose teachers now answer the probe samples differently (a change outside their tensors)."""
    now_t = torch.tensor(now, dtype=torch.float64)
    stored_t = torch.tensor(stored if stored is not None else [], dtype=torch.float64)
    if stored_t.shape != now_t.shape:
        raise DataError(f"teacher cache '{path}' holds the teachers' outputs of shape {tuple(stored_t.shape)} on its "
                        f"probe samples, {tuple(now_t.shape)} now. Pass another cache_path, or {rebuild}.")
    if not now_t.numel():
        return
    change, scale = float((now_t - stored_t).abs().max()), float(stored_t.abs().max())
    if change > PROBE_RTOL * scale + 1e-4:
        raise DataError(f"teacher cache '{path}' is stale: the teacher's outputs on {len(now)} probe samples differ "
                        f"from those stored with the cache by up to {change:.3g}, though its weights hash matches (it "
                        "was changed outside its tensors, e.g. an attribute read in forward, or a patched forward). "
                        f"Pass another cache_path, or {rebuild}.")


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

    Examples:
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
        # the Trainer sets the epoch in the main process; a shared-memory scalar carries it to
        # DataLoader workers, whose copy of this object (persistent ones keep it) is made only once
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def __setstate__(self, state: dict[str, Any]) -> None:
        # a spawned worker receives the shared scalar itself; a pickle or deepcopy gets a private
        # copy, which must be shared again before a fork so that its own workers see its epochs
        self.__dict__.update(state)
        if not self._epoch.is_shared():
            self._epoch.share_memory_()

    @property
    def epoch(self) -> int:
        """The epoch whose views ``__getitem__`` returns, in this process and in every loader worker."""
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Pick the views of ``epoch`` (the Trainer calls this through the loader's ``set_epoch``)."""
        self._epoch.fill_(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def view(self, index: int, view: int) -> tuple[torch.Tensor, Any]:
        """View ``view`` of sample ``index`` and its label (``None`` if unlabelled): the same tensor every time."""
        item = self.dataset[index]
        x, y = (item[0], item[1] if len(item) > 1 else None) if isinstance(item, (tuple, list)) else (item, None)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + index) * 1_009 + view)
            return self.transform(x), y

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        view = (index + self.epoch) % self.views
        x, y = self.view(index, view)
        row = index * self.views + view
        return (x, row) if y is None else (x, y, row)
