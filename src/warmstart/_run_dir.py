"""The run folder: checked writable, claimed by one run at a time, never a finished run's files replaced unasked,
and cleared of interrupted writes."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import os
import re
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from warmstart import distributed
from warmstart.errors import ConfigError, OutDirBusyError, RunExistsError

LOCK_NAME = ".warmstart.lock"
# atomic_path's temporary files: ".<name>.<8 random characters>.tmp" (tempfile.mkstemp)
_TEMP_FILE = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")

# warmstart's own files in a run folder: what a fresh run would replace, and all that overwrite=True deletes
RUN_FILES = (
    "last.pt", "last.safetensors", "ema.safetensors", "metrics.csv",  # the Trainer and its callbacks
    "teacher_logits.npy", "teacher_logits.json", "teacher_logits.fingerprint.npy",  # DistillTrainer's teacher cache
    "pretrained.safetensors", "encoder.safetensors", "finetuned.safetensors", "student.safetensors",  # the jobs
    "pruned_distilled.safetensors", "selection.json", "results.json", "curves.json", "report.md", "accuracy.png",
    "finetune_curves.png", "distill_curves.png", "accuracy_vs_trainable.png", "tradeoff.png",
)
SETTINGS_FILES = ("config.yaml", "job.yaml")  # written when a run starts: alone, they are no run's results
RUN_FOLDERS = ("last.dcp", ".last.dcp.old")  # the sharded checkpoint, and the previous one a crash left aside
BEST_FILES = "best*.safetensors"  # BestCheckpoint's
TENSORBOARD, EVENT_FILES = "tensorboard", "events.out.tfevents.*"  # TensorBoardLogger's: only its events are ours


def check_out_dir(out_dir: str | os.PathLike) -> Path:
    """Create ``out_dir`` if needed and check that files can be written there.

    ``~`` at the start means the user's home folder, as in a shell.

    Raises:
        ConfigError: an empty path, a path that is a file, or a folder that cannot be created or written.
    """
    if not str(out_dir).strip():  # Path("") is the working directory: a run would scatter its files there
        raise ConfigError(f"out_dir {str(out_dir)!r} is empty; pass out_dir='.' to write into the working directory, "
                          "a folder path, or out_dir=None to write no files")
    path = Path(out_dir).expanduser()
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


@dataclasses.dataclass
class _Claim:
    """This process's hold on a run folder (the lock file says which process; this says which part of it)."""

    thread: int  # the thread that claimed the folder
    lends: bool = False  # a job's claim: one run at a time that the job's thread starts in the folder may use it
    lent: bool = False  # such a run is going on now
    checked: bool = False  # check_fresh_run passed under this claim: what the folder holds now is this claim's own


_claims: dict[str, _Claim] = {}  # the folders this process holds, by real path
_claims_lock = threading.Lock()


def _key(out_dir: Path) -> str:
    return os.path.realpath(out_dir)


def _is_stale(holder: dict[str, Any] | None) -> bool:
    """A lock is stale when its writer crashed: unreadable, or its process on this host is gone.

    A lock naming this process that this process does not hold (it is not in ``_claims``, which
    :func:`acquire_lock` checks first) was left behind too.
    """
    if holder is None:
        return True
    if holder.get("host") != socket.gethostname():
        return False  # another machine's process cannot be checked from here
    pid = int(holder.get("pid", -1))
    return pid == os.getpid() or not _process_alive(pid)


def _describe(holder: dict[str, Any]) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return f"process {holder.get('pid')} on host {holder.get('host')} (started {started})"


def acquire_lock(out_dir: Path, lends: bool = False) -> Path:
    """Claim ``out_dir`` for this run with a lock file holding this process's pid and host.

    A lock left by a crashed process on this host is taken over; a live holder is refused, also
    when it is this process (another thread, or a run that has not ended). The one exception is a
    job's claim (``lends=True``, see :func:`job_lock`): the runs that the job's thread starts in
    the folder use it, one at a time.

    Raises:
        OutDirBusyError: another live run (named) holds the folder.
    """
    with _claims_lock:
        claim = _claims.get(_key(out_dir))
        if claim is not None:
            if claim.lends and not claim.lent and claim.thread == threading.get_ident():
                claim.lent = True
                return out_dir / LOCK_NAME
            raise OutDirBusyError(
                f"out_dir '{out_dir}' is in use by another run of this process (pid {os.getpid()}: another thread, or "
                "a run that has not ended). Two runs writing one folder would overwrite each other's checkpoints and "
                "logs: give this run another out_dir, or start it when that one has ended.")
        path = _create_lock_file(out_dir)
        _claims[_key(out_dir)] = _Claim(threading.get_ident(), lends=lends)
        return path


def _create_lock_file(out_dir: Path) -> Path:
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
    """End this claim: a run using a job's claim hands it back to the job; otherwise remove the lock file if this
    process still holds it."""
    with _claims_lock:
        claim = _claims.get(_key(path.parent))
        if claim is not None and claim.lent:
            claim.lent = False
            return
        _claims.pop(_key(path.parent), None)
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


@contextlib.contextmanager
def job_lock(out_dir: Path | None, overwrite: bool, *, stages: Sequence[str] = (),
             keep: Iterable[str | os.PathLike] = (), out_key: str | None = "out_dir", fresh: bool = True,
             resume_with: str | None = None) -> Iterator[None]:
    """Hold ``out_dir`` for a job: claimed before the job writes anything (``job.yaml`` too), and checked for an
    earlier run (:func:`check_fresh_run`, with the command line's ways round).

    The job's own trainers take the lock again in ``fit``: they get it (one at a time, from the job's
    thread) and skip the check, since what the folder then holds is the job's own. Under ``torchrun``
    the process that becomes rank 0 (``RANK=0``) holds it, as in :func:`run_lock`. ``fresh=False``
    (a job that resumes) claims the folder without the check: what it holds is the run to continue.
    ``resume_with`` is the call that continues such a run, named in the refusal (``out_key=None``).

    Raises:
        OutDirBusyError: another live run holds the folder.
        RunExistsError: the folder holds an earlier run and ``overwrite`` is False.
    """
    if out_dir is None or int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    lock = acquire_lock(out_dir, lends=True)
    try:
        remove_interrupted_writes(out_dir)
        if fresh:
            check_fresh_run(out_dir, overwrite, stages=stages, keep=keep, out_key=out_key, resume_with=resume_with)
        else:
            _claims[_key(out_dir)].checked = True
        yield
    finally:
        release_lock(lock)


def holds(out_dir: Path) -> bool:
    """True when this process holds ``out_dir`` (so it is the one to write the job's files there)."""
    return _key(out_dir) in _claims


def check_fresh_run_on_every_rank(out_dir: Path, overwrite: bool, device: torch.device | str = "cpu") -> None:
    """:func:`check_fresh_run` on rank 0, its refusal raised on every rank (so no rank trains on alone and hangs)."""
    error = None
    if distributed.is_main_process():
        try:
            check_fresh_run(out_dir, overwrite)
        except RunExistsError as err:
            error = err
    if distributed.any_rank(error is not None, device):
        raise error or RunExistsError(f"out_dir '{out_dir}' holds an earlier run (rank 0 refused to replace it): "
                                      "continue it with fit(..., resume='last'), choose another out_dir, or pass "
                                      "overwrite=True")


def check_fresh_run(out_dir: Path, overwrite: bool, *, stages: Sequence[str] = (),
                    keep: Iterable[str | os.PathLike] = (), out_key: str | None = None,
                    resume_with: str | None = None) -> None:
    """Refuse a fresh run into a folder that holds an earlier run; with ``overwrite``, delete that run's files instead.

    The run's files are warmstart's own (``RUN_FILES``, ``RUN_FOLDERS``, ``best*.safetensors``, the
    event files in ``tensorboard/``, and the settings ``config.yaml`` and ``job.yaml``), in
    ``out_dir`` and in its ``stages`` sub-folders; a user's other files are never touched. Settings
    alone (a run that stopped before it wrote anything else) are no run to keep: the new run
    rewrites them. Call it holding the folder's lock; under a claim that was already checked (a
    job's, whose trainer calls it again) it does nothing.

    Args:
        out_dir: the run folder.
        overwrite: delete an earlier run's files instead of refusing.
        stages: sub-folders holding the run's stages (a pipeline's), checked and cleared the same way.
        keep: files the new run reads (the weights it starts from): never deleted.
        out_key: the folder's config key, for a job (``"trainer.out_dir"``): the refusal then names the
            command line's ways round instead of ``fit``'s.
        resume_with: the call that continues the run (``'fine_tune(..., resume="last")'``), named
            in the refusal instead of ``fit``'s.

    Raises:
        RunExistsError: the folder holds an earlier run and ``overwrite`` is False. The message names
            what it holds and the ways round: ``resume="last"``, another ``out_dir``, ``overwrite=True``.

    Examples:
        >>> check_fresh_run(Path("runs/mnist"), overwrite=False)  # doctest: +SKIP
        RunExistsError: out_dir 'runs/mnist' holds an earlier run trained to epoch 3, step 120 (config.yaml, ...
    """
    claim = _claims.get(_key(out_dir))
    if claim is not None and claim.checked:
        return
    found = [path for folder in ("", *stages) for path in _run_files(out_dir / folder)]
    if any(path.name not in SETTINGS_FILES for path in found):
        if not overwrite:
            raise RunExistsError(_refusal(out_dir, found, out_key, resume_with))
        kept = {os.path.realpath(path) for path in keep}
        for path in found:
            if os.path.realpath(path) in kept:
                continue
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        for folder in ("", *stages):
            _remove_empty(out_dir / folder / TENSORBOARD, out_dir)
            _remove_empty(out_dir / folder, out_dir)
    if claim is not None:
        claim.checked = True


def _run_files(folder: Path) -> list[Path]:
    """warmstart's files in ``folder`` (see :func:`check_fresh_run`)."""
    if not folder.is_dir():
        return []
    found = [folder / name for name in (*RUN_FILES, *SETTINGS_FILES) if (folder / name).is_file()]
    found += [folder / name for name in RUN_FOLDERS if (folder / name).is_dir()]
    found += sorted(path for path in folder.glob(BEST_FILES) if path.is_file())
    return found + sorted(folder.glob(EVENT_FILES)) + sorted((folder / TENSORBOARD).glob(EVENT_FILES))


def _refusal(out_dir: Path, found: list[Path], out_key: str | None, resume_with: str | None = None) -> str:
    names = sorted({_shown(path, out_dir) for path in found})
    listed = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    if resume_with is not None:
        keep = f"continue it with {resume_with} or give this run another " + (f"folder ({out_key}=PATH)" if out_key else
                                                                             "out_dir")
        replace = "pass --overwrite (or trainer.overwrite=true in the config)" if out_key else "pass overwrite=True"
    elif out_key is None:
        resumable = any(path.parent == out_dir and path.name in ("last.pt", *RUN_FOLDERS) for path in found)
        keep = ('continue it with fit(..., resume="last") or ' if resumable else "") + "give this run another out_dir"
        replace = "pass overwrite=True (on the command line: --overwrite)"
    else:
        keep = f"give this run another folder ({out_key}=PATH)"
        replace = "pass --overwrite (or trainer.overwrite=true in the config)"
    return (f"out_dir '{out_dir}' holds an earlier run{_progress(out_dir / 'metrics.csv')} ({listed}), which a fresh "
            f"run would replace. To keep it, {keep}; to replace it, {replace}.")


def _shown(path: Path, out_dir: Path) -> str:
    """``path`` as the refusal lists it: a file or folder of ``out_dir``, or the sub-folder holding it."""
    parts = path.relative_to(out_dir).parts
    return parts[0] + "/" if len(parts) > 1 or path.is_dir() else parts[0]


def _progress(metrics: Path) -> str:
    """``" trained to epoch E, step S"`` from the last row of ``metrics.csv``, or ``""`` when it cannot tell."""
    try:
        with metrics.open(newline="") as f:
            rows = list(csv.DictReader(f))
        return f" trained to epoch {int(rows[-1]['epoch'])}, step {int(rows[-1]['step'])}"
    except (OSError, csv.Error, IndexError, KeyError, TypeError, ValueError):
        return ""


def _remove_empty(folder: Path, top: Path) -> None:
    """Remove ``folder`` and then its parents below ``top`` while they are empty."""
    while folder != top and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent
