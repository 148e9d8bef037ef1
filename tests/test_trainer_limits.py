"""Where the Trainer's features meet: max_steps x max_epochs x schedules, repeated fits, the checkpoint kinds, resume."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import make_dataset, make_mlp
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader

import warmstart as ws
from warmstart._resume import ResumeChangeWarning
from warmstart.errors import CheckpointError


def _loader(n: int = 64, batch_size: int = 8) -> DataLoader:
    return DataLoader(make_dataset(n=n), batch_size=batch_size, shuffle=True)


def _trainer(**options) -> ws.Trainer:
    torch.manual_seed(0)
    options = {"progress": False, "seed": 1, **options}
    return ws.Trainer(make_mlp(), {"name": "sgd", "lr": 0.1}, **options)


def test_a_schedule_is_planned_over_the_steps_max_epochs_lets_run():
    trainer = _trainer(max_epochs=2, max_steps=1000, scheduler={"name": "cosine"})
    trainer.fit(_loader())  # 2 epochs of 8 steps stop training long before step 1000
    assert trainer.global_step == 16
    assert trainer.schedule_description()["total_steps"] == 16
    assert trainer.current_lr() < 1e-6  # the cosine reached its end (planned over 1000 steps it ended at 0.099)


def test_max_steps_alone_is_not_capped_at_one_epoch():
    trainer = _trainer(max_steps=20, scheduler={"name": "cosine"})
    history = trainer.fit(_loader())
    assert trainer.global_step == 20 and trainer.epoch == 2  # 8 steps an epoch: 2 whole epochs and 4 steps
    assert [row["epoch"] for row in history] == [1, 2, 3] and history[-1]["step"] == 20
    assert trainer.current_lr() < 1e-6
    assert _trainer().config.epochs == 1  # neither limit: one epoch, as before


def test_max_steps_inside_an_epoch_validates_and_saves_the_final_weights(tmp_path):
    trainer = _trainer(max_steps=5, out_dir=tmp_path)
    history = trainer.fit(_loader(), _loader())
    assert len(history) == 1 and history[0]["step"] == 5 and "val_accuracy" in history[0]
    saved = load_file(tmp_path / "last.safetensors")
    for name, value in trainer.unwrapped_model.state_dict().items():
        assert torch.equal(saved[name], value), name  # the weights after step 5, not the initial ones
    model = make_mlp()
    model.load_state_dict(saved)
    assert ws.evaluate(model, _loader()) == pytest.approx({k[4:]: v for k, v in history[0].items() if k.startswith("val_")})


def test_a_partial_epoch_row_is_replaced_when_a_resumed_run_completes_the_epoch(tmp_path):
    _trainer(max_steps=5, max_epochs=2, out_dir=tmp_path).fit(_loader())
    resumed = _trainer(max_epochs=2, out_dir=tmp_path)
    with pytest.warns(ResumeChangeWarning, match="max_steps"):
        history = resumed.fit(_loader(), resume="last")
    straight = _trainer(max_epochs=2)
    straight_history = straight.fit(_loader())
    assert [row["epoch"] for row in history] == [1, 2]
    assert [row["train_loss"] for row in history] == pytest.approx([row["train_loss"] for row in straight_history])
    for name, value in straight.unwrapped_model.state_dict().items():
        assert torch.equal(resumed.unwrapped_model.state_dict()[name], value), name


def test_a_second_fit_with_a_longer_horizon_continues_the_schedule():
    trainer = _trainer(max_epochs=2, scheduler={"name": "cosine"})
    trainer.fit(_loader())
    assert trainer.current_lr() < 1e-6
    trainer.config.max_epochs = 4
    history = trainer.fit(_loader())
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    assert history[2]["lr"] > 0.01  # re-planned over 32 steps and positioned at step 16, not stuck at lr 0
    straight = _trainer(max_epochs=4, scheduler={"name": "cosine"})
    straight.fit(_loader())
    assert trainer.current_lr() == pytest.approx(straight.current_lr(), abs=1e-9)


def test_resume_last_without_an_out_dir_is_refused():
    with pytest.raises(CheckpointError, match="out_dir=None"):
        _trainer().fit(_loader(), resume="last")


def test_a_changed_loss_function_is_listed_at_resume(tmp_path):
    _trainer(max_epochs=1, out_dir=tmp_path).fit(_loader())
    resumed = _trainer(max_epochs=2, out_dir=tmp_path)
    resumed.loss_fn = nn.CrossEntropyLoss(label_smoothing=0.2)
    with pytest.warns(ResumeChangeWarning, match=r"loss_fn: 'torch.nn.functional.cross_entropy' -> .*label_smoothing=0.2"):
        resumed.fit(_loader(), resume="last")


@pytest.fixture
def _no_process_group_left():
    yield
    import torch.distributed as dist

    if dist.is_initialized():  # strategy="fsdp" without torchrun made a group of this one process
        dist.destroy_process_group()


def test_resume_last_takes_the_newest_checkpoint_of_either_kind(tmp_path, _no_process_group_left):
    with pytest.warns(UserWarning, match="single shard"):
        _trainer(max_epochs=1, out_dir=tmp_path, strategy="fsdp").fit(_loader())
    assert (tmp_path / "last.dcp").is_dir() and not (tmp_path / "last.pt").exists()
    plain = _trainer(max_epochs=2, out_dir=tmp_path)
    with pytest.warns(ResumeChangeWarning):
        plain.fit(_loader(), resume="last")  # the sharded folder is the run's newest checkpoint: continued, not ignored
    assert plain.epoch == 2 and len(plain.history) == 2
    with pytest.warns(UserWarning, match="single shard"), pytest.raises(CheckpointError, match="whole-model checkpoint"):
        _trainer(max_epochs=3, out_dir=tmp_path, strategy="fsdp").fit(_loader(), resume="last")  # last.pt is newer


def test_a_damaged_sharded_checkpoint_is_refused_not_overwritten(tmp_path):
    folder = tmp_path / "last.dcp"
    folder.mkdir()
    (folder / "trainer.pt").write_bytes(b"")  # DCP's .metadata missing
    with pytest.raises(CheckpointError, match="not a complete sharded checkpoint"):
        _trainer(out_dir=tmp_path).fit(_loader(), resume="last")
    assert (folder / "trainer.pt").exists()


def test_evaluate_needs_no_trainer_and_measures_frozen_models():
    model = make_mlp().requires_grad_(False)
    loader = _loader()
    with pytest.raises(ws.ConfigError, match="warmstart.evaluate"):
        ws.Trainer(model, progress=False)
    model.train()
    result = ws.evaluate(model, loader)
    assert model.training  # the mode it had is given back
    x, y = make_dataset(n=64).tensors
    with torch.no_grad():
        logits = model(x)
    assert result["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-5)
    assert result["accuracy"] == pytest.approx((logits.argmax(1) == y).float().mean().item())
    with pytest.raises(ws.DataError, match="labels must be in"):
        ws.evaluate(nn.Linear(10, 2), loader)


def test_trainer_evaluate_is_the_free_function_with_its_validation_step():
    trainer = _trainer(max_epochs=1)
    trainer.fit(_loader())
    assert trainer.evaluate(_loader()) == pytest.approx(ws.evaluate(trainer.unwrapped_model, _loader()))


def test_checkpoints_keep_every_ranks_random_streams(tmp_path):
    _trainer(max_epochs=1, out_dir=tmp_path).fit(_loader())
    state = ws.load_checkpoint(tmp_path / "last.pt")
    assert isinstance(state["rng"], list) and len(state["rng"]) == 1 and os.path.exists(tmp_path / "last.safetensors")


def test_a_second_fit_on_a_finished_trainer_says_it_trains_nothing():
    """Issue 37: it returned the old history and trained nothing, without a word."""
    trainer = _trainer(max_epochs=1)
    history = trainer.fit(_loader())
    before = {k: v.clone() for k, v in trainer.unwrapped_model.state_dict().items()}
    with pytest.warns(UserWarning, match=r"already trained 1 epoch\(s\) \(8 steps\).*trains nothing.*Raise "
                                         r"trainer.config.max_epochs"):
        assert trainer.fit(_loader(n=32, batch_size=4)) == history
    assert all(torch.equal(before[k], v) for k, v in trainer.unwrapped_model.state_dict().items())


def test_a_warmup_longer_than_the_run_is_said():
    with pytest.warns(UserWarning, match=r"warmup of 24 optimizer steps is longer than the run's 16.*ends at 67% of lr"):
        _trainer(max_epochs=2, scheduler={"name": "cosine", "warmup_epochs": 3}).fit(_loader())


@pytest.mark.parametrize("loss_fn", [None, torch.nn.CrossEntropyLoss()])
def test_one_output_under_cross_entropy_is_refused_not_trained_at_loss_zero(loss_fn):
    """Issue 37: a 1-output model with float targets trained at loss 0.0, and evaluate reported -0.0."""
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    model = nn.Linear(4, 1)
    with pytest.raises(ws.DataError, match=r"one output \(shape \(8, 1\)\).*loss is 0.*mse_loss"):
        ws.Trainer(model, loss_fn=loss_fn, max_epochs=1, progress=False).fit([(x[:8], y[:8]), (x[8:], y[8:])])
    with pytest.raises(ws.DataError, match="one output"):
        ws.evaluate(model, [(x, y)], loss_fn=loss_fn)
    trained = ws.Trainer(model, loss_fn=torch.nn.functional.mse_loss, max_epochs=1, progress=False)
    assert trained.fit([(x, y)])[0]["train_loss"] > 0  # the regression loss trains it
