"""Structured pruning: shapes, parameter counts, the head kept, steps, and every bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from warmstart.compress import count_parameters, prune
from warmstart.errors import ConfigError
from warmstart.models import mlp, small_cnn

IMAGE = torch.randn(4, 1, 28, 28)


class Residual(nn.Module):
    """Two convolutions whose outputs are added: their output channels must be pruned together."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.branch = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                    nn.Conv2d(16, 16, 3, padding=1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.branch(x)
        return self.head(self.pool(x).flatten(1))


def test_pruned_cnn_keeps_output_shape_and_reports_its_parameters():
    model = small_cnn(width=16)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    pruned, report = prune(model, IMAGE, ratio=0.5)
    assert pruned(IMAGE).shape == (4, 10)
    assert count_parameters(pruned) == report.params_after < report.params_before == count_parameters(model)
    assert abs(report.achieved_ratio - 0.5) < 0.03
    assert report.macs_after < report.macs_before
    assert pruned.head.out_features == 10 and report.ignored == ["head"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())  # the original is untouched
    widths = {change.name: change for change in report.layers}
    assert widths["block1.0"].after[1] < widths["block1.0"].before[1] == 16


def test_residual_channels_are_pruned_together():
    pruned, report = prune(Residual(), IMAGE, ratio=0.4)
    assert pruned.stem.out_channels == pruned.branch[3].out_channels == pruned.head.in_features < 16
    assert pruned(IMAGE).shape == (4, 10)
    assert count_parameters(pruned) == report.params_after


def test_steps_call_recover_between_steps_and_global_pruning_reaches_the_ratio():
    calls = []
    pruned, report = prune(mlp(784, [64, 64], 10), IMAGE, ratio=0.6, steps=3, global_pruning=True,
                           recover_fn=lambda model, step: calls.append((step, count_parameters(model))))
    assert [step for step, _ in calls] == [1, 2]
    assert [params for _, params in calls] == report.params_per_step[:2]
    assert report.params_per_step == sorted(report.params_per_step, reverse=True)
    assert abs(report.achieved_ratio - 0.6) < 0.03


def test_taylor_importance_uses_the_gradient_batch():
    batch = (IMAGE, torch.tensor([0, 1, 2, 3]))
    pruned, report = prune(small_cnn(width=8), IMAGE, ratio=0.3, importance="taylor", gradient_batch=batch)
    assert abs(report.achieved_ratio - 0.3) < 0.05
    assert all(p.grad is None for p in pruned.parameters())


def test_ignored_layers_keep_their_outputs():
    pruned, report = prune(mlp(784, [64, 64], 10), IMAGE, ratio=0.05, ignore=["fc1.0"])
    assert pruned.fc1[0].out_features == 64 and pruned.fc2[0].out_features < 64
    assert report.ignored == ["fc1.0", "head"]


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.2, 1.5])
def test_ratio_outside_zero_one_is_refused(ratio):
    with pytest.raises(ConfigError, match=r"must be in \(0, 1\)"):
        prune(small_cnn(width=4), IMAGE, ratio=ratio)


def test_ignore_entry_not_in_the_model_is_refused():
    with pytest.raises(ConfigError, match="no module 'blok1'.*did you mean 'block1'"):
        prune(small_cnn(width=4), IMAGE, ignore=["blok1"])
    with pytest.raises(ConfigError, match="not a module of this model"):
        prune(small_cnn(width=4), IMAGE, ignore=[nn.Linear(2, 2)])


def test_unknown_importance_and_taylor_without_batch_are_refused():
    with pytest.raises(ConfigError, match="did you mean 'magnitude'"):
        prune(small_cnn(width=4), IMAGE, importance="magnitud")
    with pytest.raises(ConfigError, match="gradient_batch"):
        prune(small_cnn(width=4), IMAGE, importance="taylor")


class Detached(nn.Module):
    """A layer run under no_grad: torch-pruning cannot see it in the autograd graph."""

    def __init__(self):
        super().__init__()
        self.features, self.head = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x):
        with torch.no_grad():
            hidden = self.features(x)
        return self.head(hidden.relu())


def test_model_that_cannot_be_traced_is_refused():
    with pytest.raises(ConfigError, match="cannot trace Detached.*features"):
        prune(Detached(), torch.randn(2, 4), ratio=0.5)
    with pytest.raises(ConfigError, match=r"cannot trace Sequential.*shape \(2, 5\)"):
        prune(mlp(4, [8], 2), torch.randn(2, 5), ratio=0.5)


def test_unreachable_ratio_and_nothing_to_prune_are_refused():
    with pytest.raises(ConfigError, match="at most"):
        prune(mlp(784, [4], 10), IMAGE, ratio=0.95)
    with pytest.raises(ConfigError, match="no Linear or convolution layer to prune"):
        prune(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), IMAGE, ratio=0.5)
