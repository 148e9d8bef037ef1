"""Resume policy: changed settings are applied and stated, or refused and stated; never silently dropped."""

from __future__ import annotations

import pytest
import torch
from conftest import make_dataset, make_mlp
from torch.utils.data import DataLoader

import warmstart as ws
from warmstart._resume import ResumeChangeWarning
from warmstart.errors import CheckpointError


def _loader(batch_size: int = 8) -> DataLoader:
    return DataLoader(make_dataset(n=64), batch_size=batch_size, shuffle=True)


class _LrLog(ws.Callback):
    def __init__(self):
        self.lrs: list[float] = []

    def on_train_step_end(self, trainer):
        self.lrs.append(trainer.current_lr())


def _trainer(out_dir, optimizer=None, scheduler=None, callbacks=(), **options) -> ws.Trainer:
    torch.manual_seed(0)
    model = make_mlp()
    return ws.Trainer(model, optimizer or {"name": "sgd", "lr": 0.1, "momentum": 0.9}, out_dir=str(out_dir),
                      scheduler=scheduler, callbacks=list(callbacks), seed=1, progress=False, **options)


def test_a_longer_max_epochs_continues_training_on_a_replanned_schedule(tmp_path):
    _trainer(tmp_path, scheduler={"name": "cosine"}, max_epochs=2).fit(_loader())
    epoch2 = {k: v.clone() for k, v in ws.load_weights(tmp_path / "last.safetensors")[0].items()}
    log = _LrLog()
    resumed = _trainer(tmp_path, scheduler={"name": "cosine"}, callbacks=[log], max_epochs=6)
    with pytest.warns(ResumeChangeWarning) as caught:
        resumed.fit(_loader(), resume="last")
    text = str(caught[0].message)
    assert "trainer.max_epochs: 2 -> 6" in text and "schedule 'cosine' over 48 steps replaces 'cosine' over 16" in text
    assert resumed.epoch == 6 and resumed.global_step == 48
    assert any(not torch.equal(epoch2[k], v) for k, v in resumed.unwrapped_model.state_dict().items())  # it trained
    fresh = _LrLog()  # the learning rates of epochs 3-6 are those of a run planned for 6 epochs from the start
    _trainer(tmp_path / "fresh", scheduler={"name": "cosine"}, callbacks=[fresh], max_epochs=6).fit(_loader())
    assert len(log.lrs) == 32 and log.lrs == pytest.approx(fresh.lrs[16:], rel=1e-12, abs=1e-15)


def test_a_new_learning_rate_is_applied_and_stated(tmp_path):
    _trainer(tmp_path, max_epochs=1).fit(_loader())
    resumed = _trainer(tmp_path, {"name": "sgd", "lr": 0.01, "momentum": 0.5}, max_epochs=2)
    with pytest.warns(ResumeChangeWarning) as caught:
        resumed.fit(_loader(), resume="last")
    text = str(caught[0].message)
    assert "lr 0.1 -> 0.01 (applied)" in text and "momentum 0.9 -> 0.5 (applied)" in text
    assert {g["lr"] for g in resumed.optimizer.param_groups} == {0.01}
    assert {g["momentum"] for g in resumed.optimizer.param_groups} == {0.5}


def test_resuming_without_the_schedule_says_the_rate_is_now_constant(tmp_path):
    _trainer(tmp_path, scheduler={"name": "cosine"}, max_epochs=1).fit(_loader())
    resumed = _trainer(tmp_path, max_epochs=2)
    with pytest.warns(ResumeChangeWarning, match="no schedule now .*'cosine' over 8 steps.*constant learning rate"):
        resumed.fit(_loader(), resume="last")
    assert resumed.current_lr() == 0.1


def test_unchanged_settings_resume_without_a_warning(tmp_path, recwarn):
    _trainer(tmp_path, scheduler={"name": "cosine"}, max_epochs=2).fit(_loader())
    _trainer(tmp_path, scheduler={"name": "cosine"}, max_epochs=2, callbacks=[]).fit(_loader(), resume="last")
    assert not [w for w in recwarn if issubclass(w.category, ResumeChangeWarning)]


def test_resuming_a_finished_run_says_there_is_nothing_to_train(tmp_path):
    _trainer(tmp_path, max_epochs=1).fit(_loader())
    with pytest.warns(UserWarning, match="has already trained 1 epochs.*nothing to train. Raise max_epochs"):
        _trainer(tmp_path, max_epochs=1).fit(_loader(), resume="last")


def test_another_optimizer_class_is_refused_naming_both(tmp_path):
    _trainer(tmp_path, max_epochs=1).fit(_loader())
    with pytest.raises(CheckpointError, match="trained with SGD, but this trainer's optimizer is AdamW"):
        _trainer(tmp_path, {"name": "adamw"}, max_epochs=2).fit(_loader(), resume="last")


def test_a_changed_scheduler_object_is_refused(tmp_path):
    def cosine(steps):
        def build(trainer):
            return torch.optim.lr_scheduler.CosineAnnealingLR(trainer.optimizer, T_max=steps)
        return build

    first = _trainer(tmp_path, max_epochs=1)
    first.scheduler = first._scheduler_spec = cosine(8)(first)
    first.fit(_loader())
    again = _trainer(tmp_path, max_epochs=2)
    again.scheduler = again._scheduler_spec = cosine(16)(again)
    with pytest.raises(CheckpointError, match="CosineAnnealingLR passed to this trainer differs .*T_max.*by name"):
        again.fit(_loader(), resume="last")


class _StopAtStep(ws.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_step_end(self, trainer):
        if trainer.global_step == self.step:
            trainer.should_stop = True


def test_a_new_batch_size_on_a_mid_epoch_resume_is_refused(tmp_path):
    _trainer(tmp_path, max_epochs=2, max_steps=3).fit(_loader())  # stops inside epoch 1: a mid-epoch checkpoint
    with pytest.raises(CheckpointError, match="3 batches \\(24 samples\\).*now hold 48 samples.*same batch size"):
        _trainer(tmp_path, max_epochs=2).fit(_loader(batch_size=16), resume="last")


def test_a_new_accumulate_on_a_mid_epoch_resume_is_refused(tmp_path):
    _trainer(tmp_path, max_epochs=2, max_steps=3).fit(_loader())
    with pytest.raises(CheckpointError, match="middle of an epoch with accumulate=1; resuming it with accumulate=2"):
        _trainer(tmp_path, max_epochs=2, accumulate=2).fit(_loader(), resume="last")


def test_max_steps_stop_then_resume_equals_an_uninterrupted_run(tmp_path):
    straight = _trainer(tmp_path / "a", scheduler={"name": "cosine"}, max_epochs=2)
    straight.fit(_loader())
    _trainer(tmp_path / "b", scheduler={"name": "cosine"}, max_epochs=2, max_steps=11).fit(_loader())
    resumed = _trainer(tmp_path / "b", scheduler={"name": "cosine"}, max_epochs=2)
    with pytest.warns(ResumeChangeWarning, match="trainer.max_steps: 11 -> None"):
        resumed.fit(_loader(), resume="last")
    # max_steps planned the cosine over 11 steps; the resumed run re-plans it over 16, as a 2-epoch run has it
    assert resumed.global_step == 16
    assert resumed.current_lr() == pytest.approx(straight.current_lr(), abs=1e-12)
