"""The run folder: checked writable, claimed by one run at a time, and cleared of interrupted writes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from warmstart import distributed
from warmstart.errors import ConfigError, OutDirBusyError

LOCK_NAME = ".warmstart.lock"
# atomic_path's temporary files: ".<name>.<8 random characters>.tmp" (tempfile.mkstemp)
_TEMP_FILE = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def check_out_dir(out_dir: str | os.PathLike) -> Path:
    """Create ``out_dir`` if needed and check that files can be written there.

    Raises:
        ConfigError: the path is a file, or the folder cannot be created or written.
    """
    path = Path(out_dir)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"out_dir '{path}' is a file, not a folder; pass out_dir= a folder path (it is created if "
                          "missing), or out_dir=None to write no files")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass  # creating and removing a file is the test
    except OSError as err:
        raise ConfigError(f"out_dir '{path}' is not writable ({err.strerror or err}); pass out_dir= a folder you can "
                          "write, or out_dir=None to write no files") from None
    return path


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True


def _read_holder(path: Path) -> dict[str, Any] | None:
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # unreadable: a lock file cut short by a crash while it was written
    return holder if isinstance(holder, dict) else None


def _is_stale(holder: dict[str, Any] | None) -> bool:
    """A lock is stale when its writer crashed: unreadable, or its process on this host is gone (or is us)."""
    if holder is None:
        return True
    if holder.get("host") != socket.gethostname():
        return False  # another machine's process cannot be checked from here
    pid = int(holder.get("pid", -1))
    return pid == os.getpid() or not _process_alive(pid)


def _describe(holder: dict[str, Any]) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return f"process {holder.get('pid')} on host {holder.get('host')} (started {started})"


def acquire_lock(out_dir: Path) -> Path:
    """Claim ``out_dir`` for this run with a lock file holding this process's pid and host.

    A lock left by a crashed process on this host is taken over; a live holder is refused.

    Raises:
        OutDirBusyError: another live run (named) holds the folder.
    """
    path = out_dir / LOCK_NAME
    record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read_holder(path)
            if not _is_stale(holder):
                raise OutDirBusyError(
                    f"out_dir '{out_dir}' is in use by another run: {_describe(holder)}. Two runs writing one folder "
                    f"would overwrite each other's checkpoints and logs: give this run another out_dir, or wait for "
                    f"that one to end. If that process is dead (e.g. on another machine), delete '{path}'.") from None
            path.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(record)
        return path
    raise OutDirBusyError(f"could not lock out_dir '{out_dir}': another process keeps creating '{path}'")


def release_lock(path: Path) -> None:
    """Remove the lock file if this process still holds it."""
    holder = _read_holder(path)
    if holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)


def remove_interrupted_writes(out_dir: Path) -> list[Path]:
    """Delete the temporary files of writes that a crash interrupted (never renamed into place).

    Only call this while holding the folder's lock: another live run's writes would look the same.
    """
    removed = [p for p in out_dir.iterdir() if p.is_file() and _TEMP_FILE.match(p.name)]
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


@contextlib.contextmanager
def run_lock(out_dir: Path | None, device: torch.device | str = "cpu") -> Iterator[None]:
    """Hold ``out_dir``'s lock for a run (rank 0 holds it for a whole ``torchrun`` job) and clear stale temp files.

    Every rank learns whether rank 0 got the lock, so that a refused job stops on all ranks
    (``device``: where the process group's backend reduces, the trainer's device).
    """
    if out_dir is None:
        yield
        return
    lock, error = None, None
    if distributed.is_main_process():
        try:
            lock = acquire_lock(out_dir)
            remove_interrupted_writes(out_dir)
        except OutDirBusyError as err:
            error = err
    if distributed.any_rank(error is not None, device):
        raise error or OutDirBusyError(f"rank 0 could not lock out_dir '{out_dir}': another run is using it")
    try:
        yield
    finally:
        if lock is not None:
            release_lock(lock)
