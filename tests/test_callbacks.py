"""Callbacks: CSV and TensorBoard logs, early stopping, best checkpoint and the EMA of weights."""

from __future__ import annotations

import csv

import pytest
import torch
from conftest import make_dataset, make_mlp
from torch.utils.data import DataLoader

import warmstart as ws
from warmstart._resume import ResumeChangeWarning
from warmstart.checkpoint import load_weights
from warmstart.errors import ConfigError


class _Record(ws.Callback):
    """Keep a copy of the weights after every optimizer step."""

    def __init__(self):
        self.after_step: list[dict[str, torch.Tensor]] = []

    def on_train_step_end(self, trainer):
        self.after_step.append({k: v.detach().clone() for k, v in trainer.unwrapped_model.state_dict().items()})


def test_ema_matches_the_running_average_computed_by_hand():
    torch.manual_seed(0)
    record, ema = _Record(), ws.EMA(decay=0.9, evaluate=False)
    model = torch.nn.Sequential(torch.nn.Linear(10, 3), torch.nn.BatchNorm1d(3))
    expected = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    ws.Trainer(model, {"name": "sgd", "lr": 0.5}, callbacks=[record, ema], max_epochs=2, progress=False).fit(
        DataLoader(make_dataset(), batch_size=16))
    for n, weights in enumerate(record.after_step, start=1):
        decay = min(0.9, (1 + n) / (10 + n))
        for name in expected:
            if "running" in name:  # BatchNorm statistics are copied, not averaged
                expected[name] = weights[name].clone()
            else:
                expected[name] = decay * expected[name] + (1 - decay) * weights[name]
    assert len(record.after_step) == 8
    for name, value in expected.items():
        torch.testing.assert_close(ema.shadow[name], value)


def test_ema_weights_are_used_for_validation_then_swapped_back(tmp_path):
    torch.manual_seed(0)
    model = make_mlp()
    ema = ws.EMA(decay=0.5)
    loader = DataLoader(make_dataset(), batch_size=16)
    trainer = ws.Trainer(model, {"name": "sgd", "lr": 0.5}, callbacks=[ema], out_dir=str(tmp_path), progress=False)
    history = trainer.fit(loader, loader)
    live = {k: v.clone() for k, v in model.state_dict().items()}
    ema.copy_to(model)
    assert trainer.evaluate(loader)["loss"] == pytest.approx(history[-1]["val_loss"], rel=1e-6)
    model.load_state_dict(live)
    assert trainer.evaluate(loader)["loss"] != pytest.approx(history[-1]["val_loss"], rel=1e-6)
    tensors, meta = load_weights(tmp_path / "ema.safetensors")
    assert meta["ema_decay"] == 0.5 and torch.equal(tensors["0.weight"], ema.shadow["0.weight"].cpu())


def test_early_stopping_stops_after_patience_epochs_without_improvement():
    model = make_mlp()
    loader = DataLoader(make_dataset(), batch_size=16)
    stopper = ws.EarlyStopping(monitor="val_loss", patience=2, min_delta=1e9)  # nothing counts as improvement
    history = ws.Trainer(model, callbacks=[stopper], max_epochs=20, progress=False).fit(loader, loader)
    assert len(history) == 3  # epoch 1 sets the best, epochs 2 and 3 do not improve
    with pytest.raises(ConfigError, match="EarlyStopping monitors 'val_acc' \\(did you mean 'val_accuracy'\\?\\)"):
        ws.Trainer(make_mlp(), callbacks=[ws.EarlyStopping(monitor="val_acc")], progress=False).fit(loader, loader)
    with pytest.raises(ConfigError, match="mode must be 'min' or 'max'"):
        ws.EarlyStopping(mode="lowest")


def test_best_checkpoint_keeps_the_best_epoch(tmp_path):
    torch.manual_seed(0)
    loader = DataLoader(make_dataset(), batch_size=16, shuffle=True)
    best = ws.BestCheckpoint(monitor="val_accuracy", mode="max")
    trainer = ws.Trainer(make_mlp(), {"name": "adam", "lr": 0.02}, callbacks=[best], max_epochs=6,
                         out_dir=str(tmp_path), progress=False)
    history = trainer.fit(loader, loader)
    accuracies = [h["val_accuracy"] for h in history]
    assert best.best == max(accuracies) and best.best_epoch == accuracies.index(max(accuracies))
    _, meta = load_weights(tmp_path / "best.safetensors")
    assert meta["val_accuracy"] == max(accuracies) and meta["epoch"] == best.best_epoch


def test_csv_and_tensorboard_logs_are_written(tmp_path):
    pytest.importorskip("tensorboard")
    loader = DataLoader(make_dataset(), batch_size=16)
    ws.Trainer(make_mlp(), max_epochs=2, log_every=2, out_dir=str(tmp_path), progress=False).fit(loader, loader)
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["2", "4", "4", "6", "8", "8"]
    assert rows[-1]["val_accuracy"] and rows[0]["loss"]
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def _stops_where(tmp_path, name: str, max_steps: int | None) -> tuple[list[int], list[tuple[str, str]]]:
    """EarlyStopping on a metric that never improves (patience 3), stopped by max_steps and resumed when given."""
    def trainer(**limits):
        torch.manual_seed(0)
        return ws.Trainer(make_mlp(), {"name": "sgd", "lr": 0.05}, max_epochs=8, progress=False, seed=0, log_every=3,
                          out_dir=tmp_path / name, callbacks=[ws.EarlyStopping("train_loss", patience=3, mode="max")],
                          **limits)

    loader = DataLoader(make_dataset(n=64), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0))
    if max_steps is None:
        history = trainer().fit(loader)
    else:
        trainer(max_steps=max_steps).fit(loader)  # stops inside epoch 2
        with pytest.warns(ResumeChangeWarning, match="max_steps"):
            history = trainer().fit(loader, resume="last")
    with open(tmp_path / name / "metrics.csv", newline="") as f:
        rows = [(row["epoch"], row["step"]) for row in csv.DictReader(f)]
    return [row["epoch"] for row in history], rows


def test_an_epoch_that_max_steps_stopped_is_counted_once_when_resumed(tmp_path):
    epochs, rows = _stops_where(tmp_path, "whole", None)
    assert epochs == [1, 2, 3, 4]  # epoch 1 is the best; 2, 3, 4 do not improve: stop after 4
    resumed_epochs, resumed_rows = _stops_where(tmp_path, "cut", max_steps=12)
    assert resumed_epochs == epochs and resumed_rows == rows  # callbacks and metrics.csv as if never stopped
    with open(tmp_path / "cut" / "metrics.csv", newline="") as f:
        assert all(not row.get("step") or row["epoch"] for row in csv.DictReader(f))


def test_the_partial_epoch_row_is_in_metrics_csv_when_the_run_ends_there(tmp_path):
    torch.manual_seed(0)
    trainer = ws.Trainer(make_mlp(), {"name": "sgd", "lr": 0.05}, max_steps=12, progress=False, out_dir=tmp_path,
                         log_every=100, callbacks=[ws.EMA(decay=0.9)])
    trainer.fit(DataLoader(make_dataset(n=64), batch_size=8))
    with open(tmp_path / "metrics.csv", newline="") as f:
        assert [(row["epoch"], row["step"]) for row in csv.DictReader(f)] == [("1", "8"), ("2", "12")]
    assert (tmp_path / "ema.safetensors").exists()


def test_ema_does_not_count_or_average_a_skipped_step():
    data = make_dataset(n=32)
    x, y = data.tensors
    x = x.clone()
    x[8:16] = float("nan")  # the second batch's loss is NaN: its step is skipped
    ema = ws.EMA(decay=0.99)
    torch.manual_seed(0)
    trainer = ws.Trainer(make_mlp(), {"name": "sgd", "lr": 0.05}, max_epochs=1, progress=False, nonfinite="skip",
                         callbacks=[ema])
    trainer.fit(DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8))
    assert trainer.skipped_steps == 1 and trainer.global_step == 4 and ema.updates == 3
