"""The run folder: one live run at a time (a lock naming its holder), stale locks taken over, interrupted writes removed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_dataset, make_mlp
from torch.utils.data import DataLoader

import warmstart as ws
from warmstart._run_dir import LOCK_NAME, acquire_lock, release_lock
from warmstart.errors import ConfigError, OutDirBusyError

WORKER = Path(__file__).parent / "scripts" / "resume_worker.py"


def _fit(out_dir: Path) -> ws.Trainer:
    trainer = ws.Trainer(make_mlp(), out_dir=str(out_dir), max_epochs=1, progress=False, seed=0)
    trainer.fit(DataLoader(make_dataset(n=16), batch_size=8))
    return trainer


def test_a_second_run_in_a_live_runs_folder_is_refused_naming_the_holder(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    holder = subprocess.Popen([sys.executable, str(WORKER), str(tmp_path), "--pause-at-step", "3"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        for line in holder.stdout:
            if "PAUSED" in line:
                break
        before = (tmp_path / "metrics.csv").read_bytes()
        with pytest.raises(OutDirBusyError, match=f"in use by another run: process {holder.pid} on host "
                                                  f"{socket.gethostname()}"):
            _fit(tmp_path)
        assert (tmp_path / "metrics.csv").read_bytes() == before  # nothing of the live run was touched
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == holder.pid  # left behind by the kill
    _fit(tmp_path)  # its process is gone: the stale lock is taken over
    assert not (tmp_path / LOCK_NAME).exists()  # and released when the run ends


def test_the_lock_is_released_when_a_run_fails(tmp_path):
    trainer = ws.Trainer(make_mlp(), out_dir=str(tmp_path), progress=False)
    with pytest.raises(ws.DataError):
        trainer.fit(DataLoader(make_dataset(n=16), batch_size=32, drop_last=True))
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_lock_from_another_host_is_not_taken_over(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": 0}))
    with pytest.raises(OutDirBusyError, match=f"host elsewhere.*delete '{tmp_path / LOCK_NAME}'"):
        acquire_lock(tmp_path)
    (tmp_path / LOCK_NAME).write_text("{cut short")  # unreadable: a crash while it was written
    release_lock(acquire_lock(tmp_path))


def test_interrupted_writes_are_removed_when_a_run_starts(tmp_path):
    stale = [tmp_path / ".last.pt.ab12cd_9.tmp", tmp_path / ".metrics.csv.zz00zz00.tmp"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    kept = tmp_path / "notes.tmp"
    kept.write_text("not ours")
    _fit(tmp_path)
    assert not any(p.exists() for p in stale) and kept.exists()


def test_out_dir_that_is_a_file_is_named(tmp_path):
    target = tmp_path / "run"
    target.write_text("x")
    with pytest.raises(ConfigError, match="out_dir .* is a file, not a folder"):
        ws.Trainer(make_mlp(), out_dir=str(target))
