"""Rebuilding pruned shapes: depthwise convolutions, norms and size attributes follow the recorded tensors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from warmstart.compress import load_compressed, prune, save_compressed
from warmstart.compress._layers import resize_to, tensor_shapes
from warmstart.errors import CheckpointError


def depthwise_net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 8, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LayerNorm(8), nn.Linear(8, 3))


def test_depthwise_and_norm_layers_are_rebuilt_from_recorded_shapes(tmp_path):
    x = torch.randn(2, 1, 12, 12)
    pruned, _ = prune(depthwise_net(), x, ratio=0.4)
    assert pruned[3].groups == pruned[3].in_channels == pruned[3].out_channels < 16
    save_compressed(pruned, tmp_path / "dw.safetensors")
    loaded = load_compressed(tmp_path / "dw.safetensors", depthwise_net())
    assert (loaded[3].groups, loaded[4].num_features, loaded[9].normalized_shape) == \
        (pruned[3].groups, pruned[4].num_features, pruned[9].normalized_shape)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), pruned.eval()(x))


def test_resize_to_updates_linear_sizes_and_refuses_foreign_keys():
    model = nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 2))
    shapes = tensor_shapes(model) | {"0.weight": [5, 6], "0.bias": [5], "1.weight": [2, 5]}
    assert resize_to(model, shapes) == ["0", "1"]
    assert (model[0].out_features, model[1].in_features) == (5, 5)
    assert model(torch.randn(3, 6)).shape == (3, 2)
    with pytest.raises(CheckpointError, match="another architecture.*2.weight"):
        resize_to(model, {**shapes, "2.weight": [1, 2]})
