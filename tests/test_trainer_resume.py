"""Resume is bit-exact: in-process, mid-epoch, and in a new process after a SIGKILL."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import CrashAtStep, make_dataset, make_mlp
from safetensors.torch import load_file
from torch.utils.data import DataLoader

import warmstart as ws
from warmstart.errors import CheckpointError

WORKER = Path(__file__).parent / "scripts" / "resume_worker.py"


class _StopAfterEpoch(ws.Callback):
    def __init__(self, epochs: int):
        self.epochs = epochs

    def on_epoch_end(self, trainer, metrics):
        if trainer.epoch + 1 == self.epochs:
            trainer.should_stop = True


def _trainer(out_dir: Path, callbacks=(), **options) -> ws.Trainer:
    torch.manual_seed(0)
    model = make_mlp(dropout=0.3)
    return ws.Trainer(model, {"name": "adamw", "lr": 0.01}, scheduler={"name": "cosine", "warmup_steps": 3},
                      max_epochs=4, out_dir=str(out_dir), seed=5, progress=False,
                      callbacks=[ws.EMA(decay=0.9), ws.EarlyStopping(patience=50), *callbacks], **options)


def _loaders():
    data = make_dataset(n=64)
    return DataLoader(data, batch_size=8, shuffle=True), DataLoader(data, batch_size=16)


def _assert_same_state(a: ws.Trainer, b: ws.Trainer) -> None:
    for (name, x), y in zip(a.unwrapped_model.state_dict().items(), b.unwrapped_model.state_dict().values()):
        assert torch.equal(x, y), name
    assert a.global_step == b.global_step
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]


def test_resume_after_two_epochs_equals_four_straight(tmp_path):
    straight = _trainer(tmp_path / "a")
    straight.fit(*_loaders())

    _trainer(tmp_path / "b", callbacks=[_StopAfterEpoch(2)]).fit(*_loaders())
    resumed = _trainer(tmp_path / "b")
    resumed.fit(*_loaders(), resume="last")
    _assert_same_state(straight, resumed)
    ema_straight = next(c for c in straight.callbacks if isinstance(c, ws.EMA)).shadow
    ema_resumed = next(c for c in resumed.callbacks if isinstance(c, ws.EMA)).shadow
    assert all(torch.equal(ema_straight[k], ema_resumed[k]) for k in ema_straight)


def test_crash_mid_epoch_resumes_from_the_last_step_checkpoint(tmp_path):
    straight = _trainer(tmp_path / "a")
    straight.fit(*_loaders())

    with pytest.raises(KeyboardInterrupt):  # checkpoints at steps 5 and 10; dies at step 11, inside epoch 2
        _trainer(tmp_path / "b", callbacks=[CrashAtStep(11)], save_every=5).fit(*_loaders())
    state = ws.load_checkpoint(tmp_path / "b" / "last.pt")
    assert (state["epoch"], state["epoch_state"]["batches"], state["global_step"]) == (1, 2, 10)

    resumed = _trainer(tmp_path / "b", save_every=5)
    resumed.fit(*_loaders(), resume="last")
    for x, y in zip(straight.unwrapped_model.parameters(), resumed.unwrapped_model.parameters()):
        assert torch.equal(x, y)
    assert resumed.global_step == straight.global_step == 32
    # the epoch cut by the crash ends with the uninterrupted run's metrics: its loss sums were checkpointed
    for a, b in zip(straight.history, resumed.history):
        assert a.keys() == b.keys()
        assert all(a[k] == pytest.approx(b[k], rel=1e-6) for k in a if k != "seconds")


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _same_rows(a: list[dict[str, str]], b: list[dict[str, str]]) -> None:
    """The same rows, values equal but for timings (samples_per_s, seconds), losses to float tolerance."""
    assert len(a) == len(b)
    for row_a, row_b in zip(a, b):
        assert row_a.keys() == row_b.keys()
        for key in row_a:
            if key not in ("samples_per_s", "seconds") and row_a[key] != row_b[key]:
                assert float(row_a[key]) == pytest.approx(float(row_b[key]), rel=1e-6), key


def test_csv_log_after_a_crash_and_resume_equals_the_uninterrupted_log(tmp_path):
    _trainer(tmp_path / "a", log_every=1, save_every=4).fit(*_loaders())
    with pytest.raises(KeyboardInterrupt):
        _trainer(tmp_path / "b", callbacks=[CrashAtStep(14)], log_every=1, save_every=4).fit(*_loaders())
    resumed = _trainer(tmp_path / "b", log_every=1, save_every=4)
    resumed.fit(*_loaders(), resume="last")
    rows = _csv(tmp_path / "b" / "metrics.csv")
    steps = [int(r["step"]) for r in rows]
    # one row per logged step and one per epoch: steps 13-14 of the crashed run appear once, not twice
    assert sorted(steps) == sorted(list(range(1, 33)) + [8, 16, 24, 32])
    _same_rows(_csv(tmp_path / "a" / "metrics.csv"), rows)


def test_csv_rows_are_appended_and_the_file_stays_readable(tmp_path):
    trainer = _trainer(tmp_path, log_every=1)
    trainer.fit(*_loaders())
    rows = _csv(tmp_path / "metrics.csv")
    assert len(rows) == 32 + 4 and rows[-1]["epoch"] == "4" and rows[-1]["val_loss"]


def test_resuming_another_models_checkpoint_lists_the_mismatched_keys(tmp_path):
    _trainer(tmp_path, callbacks=[_StopAfterEpoch(1)]).fit(*_loaders())
    other = ws.Trainer(make_mlp(hidden=20), out_dir=str(tmp_path), progress=False)
    with pytest.raises(CheckpointError, match=r"different model \(3 mismatched keys: 0.weight: checkpoint \(16, 10\) vs model \(20, 10\)"):
        other.fit(_loaders()[0], resume="last")


def test_resume_last_without_a_checkpoint_starts_fresh(tmp_path, capsys):
    trainer = _trainer(tmp_path)
    trainer.config.progress = True
    trainer.fit(*_loaders(), resume="last")
    assert "no checkpoint" in capsys.readouterr().out
    assert trainer.global_step == 32


def _worker(out_dir: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, str(WORKER), str(out_dir), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)


@pytest.mark.parametrize("loader", ["dataloader", "generator"])
def test_sigkill_mid_epoch_then_resume_in_a_new_process_is_bit_exact(tmp_path, loader):
    # "generator": a DataLoader that shuffles with its own torch.Generator, as the job layer builds them
    straight = _worker(tmp_path / "straight", "--loader", loader)
    killed = _worker(tmp_path / "killed", "--pause-at-step", "20", "--loader", loader)  # epoch 3 of 4, step 4 of 8
    for line in killed.stdout:
        if "PAUSED" in line:
            break
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    assert killed.returncode == -signal.SIGKILL
    state = ws.load_checkpoint(tmp_path / "killed" / "last.pt")
    assert (state["epoch"], state["epoch_state"]["batches"]) == (2, 2)  # the step-18 checkpoint survived

    resumed = _worker(tmp_path / "killed", "--resume", "--loader", loader)
    out_resumed, _ = resumed.communicate(timeout=120)
    out_straight, _ = straight.communicate(timeout=120)
    assert resumed.returncode == 0, out_resumed
    assert straight.returncode == 0, out_straight
    assert "START 18" in out_resumed  # it continued inside epoch 3 rather than starting over
    assert "DONE 32" in out_resumed and "DONE 32" in out_straight

    for name in ("last.safetensors", "ema.safetensors"):
        a = load_file(str(tmp_path / "straight" / name))
        b = load_file(str(tmp_path / "killed" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    history_a = ws.load_checkpoint(tmp_path / "straight" / "last.pt")["history"]
    history_b = ws.load_checkpoint(tmp_path / "killed" / "last.pt")["history"]
    _same_rows([{k: str(v) for k, v in h.items()} for h in history_a], [{k: str(v) for k, v in h.items()} for h in history_b])
    _same_rows(_csv(tmp_path / "straight" / "metrics.csv"), _csv(tmp_path / "killed" / "metrics.csv"))
