"""Sharded training checkpoints: a folder that every rank writes through torch.distributed.checkpoint, read at any world size.

The folder (conventionally ``out_dir/last.dcp``) holds DCP's files (each rank's shards and the
``.metadata`` index) and ``trainer.pt``: the training state written by :func:`save_checkpoint`
with each tensor that DCP holds replaced by a placeholder naming it. DCP holds the model's and
optimizer's tensors and every ``DTensor`` elsewhere in the state (a sharded anchor, an EMA);
the other tensors (RNG states, counters) are rank 0's, as in ``last.pt``. Reading allocates each
tensor at its saved global shape on this run's device mesh, so DCP reshards: a run saved by 2
processes resumes on 1 and the other way round. The folder must be on a file system that every
node sees.
"""

from __future__ import annotations

import os
import pickle
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from warmstart.distributed import _process_group as distributed
from warmstart.checkpoint import _fsync_dir, load_checkpoint, save_checkpoint
from warmstart.errors import CheckpointError

TRAINER_FILE = "trainer.pt"
_MARK = "__dcp__"  # a placeholder dict: {"__dcp__": key, "shape": [...], "dtype": "float32", "placements": [...]}
_WHOLE = ("model", "optimizer")  # every tensor of these goes to DCP; elsewhere only DTensors do


def save_sharded_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """Write a training state (as :meth:`Trainer._state` builds it) as a sharded folder; every rank must call it.

    Atomic as a whole: the ranks write into ``.<name>.tmp`` beside ``path``; when DCP has finished
    (its last step gathers every rank's result) rank 0 adds ``trainer.pt`` and renames the folder
    to ``path``, moving the previous checkpoint aside to ``.<name>.old`` and deleting it after.

    Returns:
        The folder written.
    """
    import torch.distributed.checkpoint as dcp

    path = Path(path)
    tmp, old = _twin(path, "tmp"), _twin(path, "old")
    if distributed.is_main_process():
        shutil.rmtree(tmp, ignore_errors=True)  # a write that a crash interrupted
    distributed.barrier()
    tensors: dict[str, torch.Tensor] = {}
    skeleton = {key: _split(value, [key], tensors, everything=key in _WHOLE) for key, value in state.items()}
    dcp.save(tensors, checkpoint_id=tmp)
    if distributed.is_main_process():
        save_checkpoint(tmp / TRAINER_FILE, {**skeleton, "world_size": distributed.world_size()})
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)  # a crash between the two renames leaves .<name>.old, which find_sharded_checkpoint reads
        _fsync_dir(path.parent)
        shutil.rmtree(old, ignore_errors=True)
    distributed.barrier()
    return path


def find_sharded_checkpoint(path: Path) -> Path | None:
    """``path`` when it holds a complete sharded checkpoint, else the previous one a crash left aside, else ``None``."""
    for candidate in (path, _twin(path, "old")):
        if (candidate / TRAINER_FILE).is_file() and (candidate / ".metadata").is_file():
            return candidate
    return None


def is_sharded_checkpoint(path: Path) -> bool:
    """True for a folder written by :func:`save_sharded_checkpoint`."""
    return path.is_dir() and (path / TRAINER_FILE).is_file()


def load_sharded_checkpoint(path: str | os.PathLike, model: nn.Module, device: torch.device) -> dict[str, Any]:
    """Read a sharded folder into a training state laid out like :func:`warmstart.checkpoint.load_checkpoint`'s.

    Tensors saved as ``DTensor`` s come back sharded the same way over ``model``'s device mesh
    (whatever its size now), or whole when the model is not sharded. Every rank must call it.

    Raises:
        CheckpointError: a missing or incomplete folder, or one written in the middle of an epoch
            by another number of processes (each rank's place in the epoch's data would differ).
    """
    import torch.distributed.checkpoint as dcp

    path = Path(path)
    if not is_sharded_checkpoint(path) or not (path / ".metadata").is_file():
        raise CheckpointError(f"'{path}' is not a complete sharded checkpoint (a folder with {TRAINER_FILE} and "
                              "DCP's .metadata); it may have been cut short: use an earlier checkpoint")
    skeleton = load_checkpoint(path / TRAINER_FILE, map_location=device)
    saved_world, world = skeleton.pop("world_size"), distributed.world_size()
    epoch_state = skeleton.get("epoch_state") or {}
    if epoch_state.get("batches", 0) > 0 and saved_world != world:
        raise CheckpointError(f"'{path}' was written in the middle of an epoch by {saved_world} processes; resuming "
                              f"it with {world} would split that epoch's remaining batches differently. Resume with "
                              f"{saved_world} processes, or from a checkpoint written at an epoch's end (any number).")
    mesh = next((p.device_mesh for p in model.parameters() if _is_dtensor(p)), None)
    templates: dict[str, torch.Tensor] = {}
    _visit(skeleton, lambda mark: templates.__setitem__(mark[_MARK], _template(mark, mesh, device)))
    from torch.distributed.checkpoint.api import CheckpointException

    read_index(path / ".metadata")  # here, so that a refusal is raised as itself (DCP would wrap it)
    try:
        dcp.load(templates, checkpoint_id=path, storage_reader=_index_reader(path))
    except (CheckpointException, RuntimeError, ValueError, OSError) as err:  # DCP wraps each rank's error
        raise CheckpointError(f"cannot read the sharded checkpoint '{path}' ({type(err).__name__}: "
                              f"{str(err).strip().splitlines()[0][:300] if str(err).strip() else ''}); use an earlier "
                              "checkpoint or start the run again") from None
    return _visit(skeleton, lambda mark: templates[mark[_MARK]])


class _IndexOnly(pickle.Unpickler):
    """An unpickler for DCP's ``.metadata`` index that rebuilds its own record types and refuses every other global.

    DCP writes the index with ``pickle`` and reads it with ``pickle.load``, so a crafted ``.metadata``
    could run code; this reader allows only the classes the index is made of (DCP's metadata
    records, ``torch.Size``, dtypes, layouts, paths).
    """

    _ALLOWED = {
        "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
        "torch.serialization": {"_get_layout"},
        "pathlib": {"PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath", "Path"},
        "collections": {"OrderedDict"},
        "torch": {"Size"},
    }

    def find_class(self, module: str, name: str) -> Any:
        found = None
        if module == "torch.distributed.checkpoint.metadata":
            import torch.distributed.checkpoint.metadata as index

            candidate = getattr(index, name, None)
            found = candidate if isinstance(candidate, type) and candidate.__module__ == index.__name__ else None
        elif module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            found = getattr(torch, name)
        elif name in self._ALLOWED.get(module, ()):
            found = super().find_class(module, name)
        if found is None:
            raise pickle.UnpicklingError(f"{module}.{name}")
        return found


def read_index(index: Path) -> Any:
    """DCP's ``.metadata`` index, read by :class:`_IndexOnly`.

    Raises:
        CheckpointError: an index that names anything but its own record types (a pickle payload),
            or one that is cut short or corrupt.
    """
    try:
        with open(index, "rb") as file:
            return _IndexOnly(file).load()
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"'{index}' refers to {err}, which is not part of a sharded checkpoint's index: loading "
                              "it would run code from the file, and warmstart will not. Use a checkpoint you wrote, or "
                              "start the run again") from None
    except (OSError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as err:
        raise CheckpointError(f"'{index}' is truncated or corrupt ({type(err).__name__}: {err}); use an earlier "
                              "checkpoint or start the run again") from None


def _index_reader(path: Path) -> Any:
    """DCP's file-system reader, reading the ``.metadata`` index with :class:`_IndexOnly` instead of ``pickle.load``."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class IndexReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            metadata = read_index(path / ".metadata")
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return IndexReader(path)


def _twin(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{kind}")


def _is_dtensor(value: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(value, DTensor)


def _split(value: Any, where: list[str], tensors: dict[str, torch.Tensor], everything: bool) -> Any:
    """``value`` with its DCP tensors moved into ``tensors`` (keyed by their path) and placeholders left behind."""
    if isinstance(value, torch.Tensor) and (everything or _is_dtensor(value)):
        key = "/".join(where)
        tensors[key] = value
        placements = [_placement_name(p) for p in value.placements] if _is_dtensor(value) else None
        return {_MARK: key, "shape": list(value.shape), "dtype": str(value.dtype).removeprefix("torch."),
                "placements": placements}
    if isinstance(value, Mapping):
        return {k: _split(v, [*where, str(k)], tensors, everything) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_split(v, [*where, str(i)], tensors, everything) for i, v in enumerate(value))
    return value


def _visit(value: Any, replace: Callable[[dict[str, Any]], Any]) -> Any:
    """``value`` with every placeholder replaced by ``replace(placeholder)``."""
    if isinstance(value, Mapping):
        if _MARK in value:
            return replace(dict(value))
        return {k: _visit(v, replace) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_visit(v, replace) for v in value)
    return value


def _placement_name(placement: Any) -> str:
    from torch.distributed.tensor import Replicate, Shard

    if isinstance(placement, Shard):
        return f"S{placement.dim}"
    if isinstance(placement, Replicate):
        return "R"
    raise CheckpointError(f"cannot checkpoint a DTensor placed as {placement}: only Shard and Replicate are saved")


def _template(mark: dict[str, Any], mesh: Any, device: torch.device) -> torch.Tensor:
    """An empty tensor to load into: the saved global shape, sharded on this run's mesh as it was saved."""
    dtype = getattr(torch, mark["dtype"])
    if mark["placements"] is None or mesh is None or len(mark["placements"]) != mesh.ndim:
        return torch.empty(mark["shape"], dtype=dtype, device=device if mark["placements"] else "cpu")
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor import empty as dtensor_empty

    placements = [Replicate() if p == "R" else Shard(int(p[1:])) for p in mark["placements"]]
    return dtensor_empty(mark["shape"], dtype=dtype, device_mesh=mesh, placements=placements)
