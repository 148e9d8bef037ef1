"""The learning-rate finder: an exponential sweep that restores the model and suggests a rate."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from warmstart.errors import ConfigError
from warmstart.finetune import lr_find


def _separable(batches: int = 10) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    centers = 3.0 * torch.eye(3, 4)
    out = []
    for _ in range(batches):
        y = torch.randint(0, 3, (32,), generator=g)
        out.append((centers[y] + 0.5 * torch.randn(32, 4, generator=g), y))
    return out


def test_lr_find_sweeps_restores_and_suggests(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = lr_find(model, _separable(), {"name": "sgd", "lr": 0.1}, start_lr=1e-4, end_lr=100.0, num_steps=100,
                     smoothing=0.9)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the model is as it was
    assert result.lrs[0] == pytest.approx(1e-4) and len(result.losses) == len(result.lrs) <= 100
    ratios = [b / a for a, b in zip(result.lrs, result.lrs[1:])]
    assert max(ratios) == pytest.approx(min(ratios))  # an exponential sweep
    lowest = min(range(len(result.losses)), key=result.losses.__getitem__)
    assert result.minimum == result.lrs[lowest] and result.suggestion == pytest.approx(result.minimum / 10)
    assert result.losses[lowest] < 0.1 * result.losses[0]  # the sweep reached rates that learn
    assert result.lrs[0] < result.steepest < result.minimum
    assert result.plot(tmp_path / "lr.png").stat().st_size > 1000
    with pytest.raises(ConfigError, match="0 < start_lr < end_lr"):
        lr_find(model, _separable(), start_lr=1.0, end_lr=0.1)
