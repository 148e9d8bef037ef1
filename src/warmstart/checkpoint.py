"""Atomic checkpoint files and safe weight loading (safetensors, or ``torch.load(weights_only=True)``)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import pickle
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from warmstart.errors import CheckpointError

CHECKPOINT_FORMAT = "warmstart-checkpoint-1"
WEIGHTS_FORMAT = "warmstart-weights-1"
COMPRESSION_ATTRIBUTE = "warmstart_compression"  # what warmstart.compress did to a model, set on the model
_LOAD_ERRORS = (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile,
                SafetensorError, KeyError, AttributeError, TypeError)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``.

    The file gets the permissions of the file it replaces, or, for a new file, those ``open``
    gives under the process's umask (``0644`` under the usual ``022``), not ``mkstemp``'s ``0600``.

    A crash or exception before the rename leaves any previous file at ``path`` untouched and
    removes the temporary file. A write that fails for want of space (``OSError(ENOSPC)``, or
    ``torch.save``'s ``[enforce fail at inline_container.cc]``) or another I/O error is a
    :class:`CheckpointError` that says so, and that the previous file is intact.

    Examples:
        >>> with atomic_path("/tmp/example.txt") as tmp:
        ...     _ = tmp.write_text("done")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # flush the data to disk before the rename makes it visible
            os.fsync(f.fileno())
        os.chmod(tmp, _mode_for(path))  # mkstemp makes 0600: a teammate or a serving process could not read it
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as err:
        failure = _write_failure(path, err)  # before the unlink, which frees the space the partial file took
        tmp.unlink(missing_ok=True)
        if failure is not None:
            raise failure from err
        raise


# errors of a write that did not reach the disk: a full disk or quota, a read-only or failing file system
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG}
# what torch.save (its zip writer, inline_container.cc) and safetensors say when a write fails
_WRITER_MESSAGES = ("inline_container", "PytorchStreamWriter failed", "file write failed", "No space left",
                    "os error 28", "StorageFull")


def _write_failure(path: Path, err: BaseException) -> CheckpointError | None:
    """A clear error for a failed write of ``path`` (``None`` when ``err`` is not a write failure)."""
    text = str(err)
    failed = (isinstance(err, OSError) and err.errno in _WRITE_ERRNOS) or (
        isinstance(err, (RuntimeError, SafetensorError)) and any(hint in text for hint in _WRITER_MESSAGES))
    if not failed:
        return None
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    # torch.save's writer does not say why a write failed: a nearly empty disk does
    full = (isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)) or any(
        hint in text for hint in ("No space left", "os error 28", "StorageFull")) or (free is not None and free < 2**24)
    space = "" if free is None else f", {free / 2**20:.1f} MiB free"
    why = ("the disk is full" if full else "the write failed") + f" ({type(err).__name__}: {_first_line(err)}{space})"
    before = (f"the previous '{path.name}' there is intact" if path.exists() else "no earlier file was there")
    return CheckpointError(f"could not write '{path}': {why}. Nothing was replaced: {before}, and the partial "
                           f"temporary file was removed. Free some space in {path.parent} (or choose another folder) "
                           "and run again; a resume continues from the last complete checkpoint.")


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a directory be opened
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def tensors_checksum(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 of named tensors: each name, dtype, shape and raw bytes, in name order."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        digest.update(f"{key}|".encode())
        _digest_tensor(digest, tensors[key])
    return digest.hexdigest()


def state_checksum(state: Any) -> str:
    """sha256 of a training state: its tensors' bytes and its plain values, walked in key order."""
    digest = hashlib.sha256()
    _digest_value(digest, state)
    return digest.hexdigest()


def _digest_tensor(digest: Any, tensor: torch.Tensor) -> None:
    tensor = tensor.detach().cpu().contiguous()
    digest.update(f"{tensor.dtype}|{list(tensor.shape)}|".encode())
    digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)


def _digest_value(digest: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor) and type(value) is torch.Tensor:
        _digest_tensor(digest, value)
    elif isinstance(value, Mapping):
        digest.update(b"{")
        for key in sorted(value, key=repr):
            digest.update(f"{key!r}:".encode())
            _digest_value(digest, value[key])
        digest.update(b"}")
    elif isinstance(value, (list, tuple)):
        digest.update(b"[")
        for item in value:
            _digest_value(digest, item)
        digest.update(b"]")
    else:
        digest.update(f"{value!r};".encode())


def _mode_for(path: Path) -> int:
    """The permissions a written file gets: those of the file it replaces, else what ``open`` would give (umask)."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    try:  # Linux states it without changing it (os.umask can only be read by setting it, racing other threads)
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """Write a training-state dict atomically with ``torch.save``, with the sha256 of its contents.

    The dict must hold only tensors and plain Python values, so that :func:`load_checkpoint`
    can read it back with ``weights_only=True``; the checksum lets it notice a file changed or
    damaged after it was written (it cannot tell who wrote it: anyone who changes the file can
    store a new one).

    Args:
        path: destination file (conventionally ``out_dir/last.pt``).
        state: the training state.

    Returns:
        The path written.
    """
    with atomic_path(path) as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, **state, "sha256": state_checksum(state)}, tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` without unpickling arbitrary objects.

    Raises:
        CheckpointError: the file is missing, truncated, corrupt, or not a warmstart checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at '{path}'; check the path, or start without resume")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except _LOAD_ERRORS as err:
        if _holds_objects(err):
            raise CheckpointError(_objects_refused(path, err)) from None
        raise CheckpointError(f"cannot read checkpoint '{path}': the file is truncated, corrupt or not a "
                              f"PyTorch file ({type(err).__name__}: {_first_line(err)}). Use an earlier "
                              f"checkpoint or start the run again.") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"'{path}' is not a warmstart training checkpoint (no '{CHECKPOINT_FORMAT}' "
                              f"marker); to load only weights use warmstart.finetune.load_pretrained")
    stored = state.pop("sha256", None)  # checkpoints of warmstart before 2026-12-07 carry none
    if stored is not None and state_checksum({k: v for k, v in state.items() if k != "format"}) != stored:
        raise CheckpointError(_damaged(path, stored))
    return state


def _damaged(path: Path, stored: str) -> str:
    return (f"'{path}' is damaged: its contents do not match the sha256 stored when it was written ({stored[:12]}...), "
            "so some bytes changed afterwards (a bad copy or disk, or an edit). Use another checkpoint (an earlier "
            "run's, or the source's), or start the run again")


def _holds_objects(err: BaseException) -> bool:
    """True when ``torch.load(weights_only=True)`` stopped at a pickled Python object (not at damage)."""
    return isinstance(err, pickle.UnpicklingError) and "Unsupported global" in str(err)


def _objects_refused(path: Path, err: BaseException) -> str:
    found = re.search(r"GLOBAL ([\w.]+)", str(err))
    what = f" ({found.group(1)})" if found else ""
    return (f"'{path}' holds pickled Python objects{what} besides tensors, and loading them would run code from the "
            "file: warmstart loads only tensors and plain values, and will not run it. A file you made yourself "
            "with torch.save(model) should hold model.state_dict() instead; a file from elsewhere may be hostile")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else ""


def export_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Return CPU, contiguous copies fit for safetensors: tensors sharing memory are cloned apart."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for name, tensor in state_dict.items():
        tensor = tensor.detach().to("cpu").contiguous()
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset()) if tensor.numel() else (0, id(tensor))
        if key in seen or tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
            tensor = tensor.clone()
        seen.add(key)
        out[name] = tensor
    return out


def save_weights(path: str | os.PathLike, state_dict: Mapping[str, torch.Tensor],
                 metadata: Mapping[str, Any] | None = None) -> Path:
    """Write weights atomically as a ``.safetensors`` file, with JSON metadata.

    Args:
        path: destination, conventionally ending in ``.safetensors``.
        state_dict: name -> tensor.
        metadata: JSON-serialisable facts stored beside the weights (number of classes, head
            module, resolved config, ...); read back by :func:`load_weights`.

    Returns:
        The path written.

    Examples:
        >>> save_weights("/tmp/w.safetensors", {"w": torch.zeros(2)}, {"num_classes": 2})
        PosixPath('/tmp/w.safetensors')
    """
    tensors = export_state_dict(state_dict)
    header = {"format": WEIGHTS_FORMAT, "warmstart": json.dumps(dict(metadata or {}), default=str),
              "sha256": tensors_checksum(tensors)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)
    return Path(path)


def load_weights(source: str | os.PathLike | Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read weights and metadata from a state dict, ``.safetensors``, ``.pt``/``.pth``/``.bin`` or a checkpoint.

    Nothing is unpickled: ``.safetensors`` files are read by safetensors, anything else by
    ``torch.load(weights_only=True)``. A full warmstart training checkpoint yields its model weights.

    Args:
        source: a path, or an in-memory state dict (or checkpoint dict).

    Returns:
        ``(state_dict, metadata)``; metadata is empty when the source carries none.

    Raises:
        CheckpointError: missing, truncated or corrupt file, or a file that holds no weights.
    """
    if isinstance(source, Mapping):
        return _unwrap_weights(dict(source), "the given dict")
    path = Path(source)
    if not path.is_file():
        raise CheckpointError(f"no weight file at '{path}'; check the path")
    if path.suffix == ".safetensors" or _is_safetensors(path):
        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
            tensors = load_file(str(path))
        except _LOAD_ERRORS as err:
            raise CheckpointError(f"cannot read '{path}': truncated or corrupt safetensors file "
                                  f"({_first_line(err)}); re-export the weights") from None
        stored = header.get("sha256")  # warmstart writes it; other tools' files (and older warmstart's) have none
        if stored is not None and tensors_checksum(tensors) != stored:
            raise CheckpointError(_damaged(path, stored))
        return tensors, _metadata(header.get("warmstart", "{}"), path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except _LOAD_ERRORS as err:
        if _holds_objects(err):
            raise CheckpointError(_objects_refused(path, err)) from None
        raise CheckpointError(f"cannot read '{path}' as weights: it is truncated, corrupt, or not a weight file "
                              f"({type(err).__name__}: {_first_line(err)}). Expected a .safetensors file, a "
                              f"state dict saved with torch.save, or a warmstart checkpoint.") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"'{path}' holds a {type(obj).__name__}, not a state dict; save "
                              f"model.state_dict() rather than the model object")
    return _unwrap_weights(dict(obj), f"'{path}'")


def _metadata(text: str, path: Path) -> dict[str, Any]:
    """The ``warmstart`` metadata of a ``.safetensors`` file: a JSON object, or a :class:`CheckpointError`."""
    try:
        metadata = json.loads(text)
    except ValueError as err:
        raise CheckpointError(f"'{path}' has malformed warmstart metadata (not JSON: {err}); the weights may still be "
                              "fine: re-save them with warmstart.save_weights, or load the tensors with "
                              "safetensors.torch.load_file") from None
    if not isinstance(metadata, dict):
        raise CheckpointError(f"'{path}' has malformed warmstart metadata (a JSON {type(metadata).__name__}, not an "
                              "object); re-save the weights with warmstart.save_weights")
    return metadata


def _is_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors files start with an 8-byte little-endian header length, then a JSON '{'
    return len(head) == 9 and head[8:9] == b"{"


def _unwrap_weights(obj: dict[str, Any], where: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    metadata: dict[str, Any] = {}
    if obj.get("format") == CHECKPOINT_FORMAT:
        metadata = dict(obj.get("metadata") or {})
        obj = obj["model"]
    elif "state_dict" in obj and isinstance(obj["state_dict"], Mapping):  # Lightning and others
        obj = obj["state_dict"]
    elif "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{where} holds no tensors; it is not a weight file")
    return tensors, metadata


def describe_compressed(metadata: Mapping[str, Any]) -> str | None:
    """A sentence saying what a checkpoint's metadata says was compressed, or ``None`` for plain weights.

    For loaders of float weights, to refuse compressed checkpoints clearly.

    Examples:
        >>> describe_compressed({}) is None
        True
    """
    info = metadata.get("compressed")
    if not isinstance(info, Mapping):
        return None
    record = info.get("record", {})
    kinds = []
    if "quantized" in record:
        kinds.append(f"int8-quantized ({record['quantized']['mode']})")
    if "pruned" in record:
        kinds.append(f"pruned ({record['pruned']['params_after']:,} of {record['pruned']['params_before']:,} "
                     f"parameters)")
    if "sparsified" in record:
        kinds.append(f"sparse ({record['sparsified']['sparsity']:.0%} zeros)")
    what = " and ".join(kinds) or "compressed"
    article = "an" if what[0] in "aeiou" else "a"
    return (f"this checkpoint holds {article} {what} model; load it with "
            f"warmstart.compress.load_compressed(path, model) where model is built as the original was")
