"""The run folder: one live run at a time (a lock naming its holder, also within one process), stale locks taken
over, interrupted writes removed, and an earlier run never replaced unless asked."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import make_dataset, make_mlp
from torch.utils.data import DataLoader

import warmstart as ws
from warmstart._run_dir import LOCK_NAME, acquire_lock, check_fresh_run, check_out_dir, job_lock, release_lock
from warmstart.errors import ConfigError, OutDirBusyError, RunExistsError

WORKER = Path(__file__).parent / "scripts" / "resume_worker.py"


def _fit(out_dir: Path, **options) -> ws.Trainer:
    trainer = ws.Trainer(make_mlp(), out_dir=str(out_dir), max_epochs=1, progress=False, seed=0, **options)
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
    _fit(tmp_path, overwrite=True)  # its process is gone: the stale lock is taken over (and its run replaced)
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


def test_an_empty_out_dir_is_refused_and_a_tilde_is_the_home_folder(tmp_path, monkeypatch):
    for empty in ("", "  "):
        with pytest.raises(ConfigError, match="is empty; pass out_dir='.' to write into the working directory"):
            check_out_dir(empty)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert check_out_dir("~/runs/a") == tmp_path / "home" / "runs" / "a"
    assert (tmp_path / "home" / "runs" / "a").is_dir() and not (tmp_path / "~").exists()


def test_a_second_claim_from_this_process_is_refused_and_a_lock_left_behind_is_stale(tmp_path):
    lock = acquire_lock(tmp_path)
    try:
        with pytest.raises(OutDirBusyError, match="in use by another run of this process"):
            acquire_lock(tmp_path)  # a nested run
        refused: list[BaseException] = []

        def other_thread() -> None:
            try:
                _fit(tmp_path)
            except OutDirBusyError as err:
                refused.append(err)

        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join(timeout=120)
        assert len(refused) == 1 and "another thread" in str(refused[0])
        assert not (tmp_path / "last.pt").exists()  # the refused run wrote nothing
    finally:
        release_lock(lock)
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": 0}))
    release_lock(acquire_lock(tmp_path))  # our pid, but not held: left behind, so taken over
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_fresh_run_into_an_earlier_runs_folder_is_refused_with_the_ways_round(tmp_path):
    _fit(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(RunExistsError) as refused:
        _fit(tmp_path)
    message = str(refused.value)
    assert f"out_dir '{tmp_path}' holds an earlier run trained to epoch 1, step 2" in message
    assert "last.pt" in message and "metrics.csv" in message
    assert 'resume="last"' in message and "another out_dir" in message and "overwrite=True" in message
    assert "--overwrite" in message
    assert isinstance(refused.value, FileExistsError)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before  # nothing touched
    resumed = ws.Trainer(make_mlp(), out_dir=str(tmp_path), max_epochs=2, progress=False, seed=0)
    with pytest.warns(UserWarning, match="max_epochs: 1 -> 2"):
        resumed.fit(DataLoader(make_dataset(n=16), batch_size=8), resume="last")  # the way round it names works
    assert resumed.epoch == 2


def test_a_folder_without_a_checkpoint_is_not_offered_resume(tmp_path):
    (tmp_path / "metrics.csv").write_text("epoch,step,loss\n")
    with pytest.raises(RunExistsError) as refused:
        check_fresh_run(tmp_path, overwrite=False)
    assert "resume" not in str(refused.value) and "(metrics.csv)" in str(refused.value)
    (tmp_path / "metrics.csv").unlink()
    (tmp_path / "config.yaml").write_text("seed: 0\n")  # settings alone: a run that stopped before any result
    check_fresh_run(tmp_path, overwrite=False)
    assert (tmp_path / "config.yaml").exists()


def test_overwrite_clears_the_earlier_runs_files_and_keeps_the_users(tmp_path):
    earlier = [tmp_path / name for name in ("last.pt", "last.safetensors", "best-acc.safetensors", "metrics.csv",
                                            "config.yaml", "job.yaml", "results.json", "report.md")]
    for path in earlier:
        path.write_text("earlier run")
    (tmp_path / "last.dcp").mkdir()
    (tmp_path / "last.dcp" / "trainer.pt").write_text("x")
    (tmp_path / ".last.dcp.old").mkdir()
    (tmp_path / "tensorboard").mkdir()
    (tmp_path / "tensorboard" / "events.out.tfevents.1.host.1.0").write_text("x")
    stage = tmp_path / "finetune" / "full"
    stage.mkdir(parents=True)
    (stage / "metrics.csv").write_text("x")
    mine = [tmp_path / "notes.txt", tmp_path / "data.safetensors", tmp_path / "plots" / "mine.png"]
    mine[2].parent.mkdir()
    for path in mine:
        path.write_text("the user's")
    check_fresh_run(tmp_path, overwrite=True, stages=["finetune/full"], keep=[tmp_path / "job.yaml"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.safetensors", "job.yaml", "notes.txt", "plots"]
    assert all(p.read_text() == "the user's" for p in mine)
    check_fresh_run(tmp_path, overwrite=False)  # nothing of the earlier run is left to refuse over


def test_a_job_lends_its_folder_to_the_runs_it_starts(tmp_path):
    _fit(tmp_path)
    with pytest.raises(RunExistsError, match=r"give this run another folder \(trainer.out_dir=PATH\); to replace "
                                             r"it, pass --overwrite"):
        with job_lock(tmp_path, overwrite=False, out_key="trainer.out_dir"):
            pass
    with job_lock(tmp_path, overwrite=True):
        assert not (tmp_path / "last.pt").exists()
        (tmp_path / "job.yaml").write_text("the job's own\n")
        trainer = _fit(tmp_path)  # the job's trainer: its files are the job's own, not an earlier run
        assert trainer.epoch == 1 and (tmp_path / LOCK_NAME).exists()  # the run ended; the job holds the folder
        run = acquire_lock(tmp_path)  # the job's next run
        with pytest.raises(OutDirBusyError):
            acquire_lock(tmp_path)  # one at a time
        release_lock(run)
        assert (tmp_path / LOCK_NAME).exists()
    assert not (tmp_path / LOCK_NAME).exists() and (tmp_path / "job.yaml").read_text() == "the job's own\n"
