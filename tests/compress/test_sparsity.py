"""Unstructured sparsity: the share of zeros, permanence, masks kept through training, bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import warmstart as ws
from warmstart.compress import remove_masks, sparsify
from warmstart.errors import ConfigError
from warmstart.models import mlp


def test_global_sparsity_reaches_the_amount_and_is_permanent():
    model = mlp(64, [32], 10)
    sparse, report = sparsify(model, amount=0.7)
    weights = [sparse.fc1[0].weight, sparse.head.weight]
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert zeros == report.zeros and report.weights == sum(w.numel() for w in weights)
    assert report.sparsity == pytest.approx(0.7, abs=1e-3)
    assert sorted(name for name, _ in sparse.named_parameters()) == ["fc1.0.bias", "fc1.0.weight", "head.bias",
                                                                      "head.weight"]
    assert int((model.fc1[0].weight == 0).sum()) == 0  # the original is untouched


def test_per_layer_sparsity_and_ignored_layers():
    sparse, report = sparsify(mlp(64, [32], 10), amount=0.5, global_pruning=False, ignore=["head"])
    assert report.layers == {"fc1.0": pytest.approx(0.5, abs=1e-3)}
    assert int((sparse.head.weight == 0).sum()) == 0


def test_kept_masks_hold_the_zeros_through_training_until_removed():
    sparse, _ = sparsify(mlp(64, [32], 10), amount=0.6, keep_masks=True)
    zeros = sparse.fc1[0].weight == 0
    data = [(torch.randn(16, 64), torch.randint(0, 10, (16,)))] * 3
    ws.Trainer(sparse, {"name": "adamw", "lr": 1e-2}, max_epochs=2, progress=False).fit(data)
    assert bool((sparse.fc1[0].weight[zeros] == 0).all())
    remove_masks(sparse)
    assert not any(name.endswith("_orig") for name, _ in sparse.named_parameters())
    assert bool((sparse.fc1[0].weight[zeros] == 0).all())


@pytest.mark.parametrize("amount", [0.0, 1.0, 2.0])
def test_amount_outside_zero_one_is_refused(amount):
    with pytest.raises(ConfigError, match=r"must be in \(0, 1\)"):
        sparsify(mlp(8, [4], 2), amount=amount)


def test_nothing_to_sparsify_and_unknown_ignore_are_refused():
    with pytest.raises(ConfigError, match="no Linear or convolution"):
        sparsify(nn.Sequential(nn.ReLU()), amount=0.5)
    with pytest.raises(ConfigError, match="no module 'hed'"):
        sparsify(mlp(8, [4], 2), amount=0.5, ignore=["hed"])
