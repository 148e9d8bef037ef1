"""Optimizers and schedules by name, checked against torch's own classes and the documented formulas."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from warmstart.errors import ConfigError
from warmstart.config import OptimizerConfig, SchedulerConfig, TrainerConfig
from warmstart.optim import OPTIMIZERS, build_optimizer, build_scheduler, check_settings, param_groups_weight_decay


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_named_optimizer_builds_its_torch_class(name):
    opt = build_optimizer(nn.Linear(3, 2).parameters(), name.upper(), lr=0.05, weight_decay=0.01)
    assert type(opt) is OPTIMIZERS[name][0]
    assert opt.defaults["lr"] == 0.05 and opt.defaults["weight_decay"] == 0.01


def test_optimizer_options_are_passed_and_checked():
    sgd = build_optimizer(nn.Linear(3, 2).parameters(), "sgd", lr=0.1, momentum=0.9, nesterov=True)
    assert sgd.defaults["momentum"] == 0.9 and sgd.defaults["nesterov"] is True
    adam = build_optimizer(nn.Linear(3, 2).parameters(), "adam", betas=[0.8, 0.9], momentum=None)
    assert adam.defaults["betas"] == (0.8, 0.9)
    with pytest.raises(ConfigError, match="optimizer 'adam' has no option 'momentum'; it takes lr, weight_decay, betas"):
        build_optimizer(nn.Linear(3, 2).parameters(), "adam", momentum=0.9)
    with pytest.raises(ConfigError, match="unknown optimizer 'lion'; valid: adagrad, adam, adamw, rmsprop, sgd"):
        build_optimizer(nn.Linear(3, 2).parameters(), "lion")
    with pytest.raises(ConfigError, match="positive"):
        build_optimizer(nn.Linear(3, 2).parameters(), "sgd", lr=0.0)


def test_no_weight_decay_on_biases_and_norms():
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    decay, no_decay = param_groups_weight_decay(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[2].weight)}
    assert len(no_decay["params"]) == 4


def _lrs(scheduler, optimizer, steps):
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_warmup_cosine_follows_its_formula():
    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
    sched = build_scheduler(opt, "cosine", total_steps=10, steps_per_epoch=5, warmup_steps=2, min_lr_ratio=0.1)
    expected = [0.0, 0.5] + [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - 2) / 8)) for s in range(2, 10)]
    assert _lrs(sched, opt, 10) == pytest.approx(expected)


def test_step_schedule_decays_per_epoch_and_plateau_waits():
    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
    sched = build_scheduler(opt, "step", total_steps=12, steps_per_epoch=3, step_size=2, gamma=0.5)
    assert _lrs(sched, opt, 12) == pytest.approx([1.0] * 6 + [0.5] * 6)
    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
    plateau = build_scheduler(opt, "plateau", total_steps=1, steps_per_epoch=1, patience=1, factor=0.5,
                              monitor="val_accuracy", mode="max")
    assert plateau.monitor == "val_accuracy"
    for value in (0.5, 0.5, 0.5):
        plateau.step(value)
    assert opt.param_groups[0]["lr"] == 0.5
    with pytest.raises(ConfigError, match="unknown scheduler 'cosin' \\(did you mean 'cosine'\\?\\)"):
        build_scheduler(opt, "cosin", total_steps=1, steps_per_epoch=1)


def test_check_settings_names_the_section_of_what_the_first_step_would_refuse():
    trainer, adamw = TrainerConfig(device="cpu"), OptimizerConfig(name="adamw")
    check_settings(trainer, adamw, SchedulerConfig(name="cosine"))  # valid settings pass
    with pytest.raises(ConfigError, match=r"^lora.optimizer: unknown optimizer 'adamx'"):
        check_settings(trainer, OptimizerConfig(name="adamx"), None, where="lora")
    with pytest.raises(ConfigError, match=r"^scheduler: .*'cosin'"):
        check_settings(trainer, adamw, SchedulerConfig(name="cosin"))
    with pytest.raises(ConfigError, match=r"^distill.trainer: "):
        check_settings(TrainerConfig(device="cpu", precision="16"), adamw, None, where="distill")
