"""Repeated blocks are found (transformer layers, ResNet blocks, none in an MLP); activation checkpointing changes nothing."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import warmstart as ws
from warmstart._blocks import checkpoint_activations, find_blocks
from warmstart.errors import ConfigError
from warmstart.models import small_resnet

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
import fsdp_scenarios as scenarios


def test_blocks_are_the_items_of_a_stack_of_one_type():
    assert [name for name, _ in find_blocks(scenarios.model())] == ["layers.0", "layers.1", "layers.2"]
    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), num_layers=2)
    assert [name for name, _ in find_blocks(encoder)] == ["layers.0", "layers.1"]
    assert [name for name, _ in find_blocks(small_resnet())] == ["stage1.0", "stage2.0", "stage3.0"]
    assert find_blocks(nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2))) == []  # layers, not blocks


def test_blocks_by_class_name_or_dotted_name_and_nested_ones_dropped():
    net = scenarios.model()
    assert [n for n, _ in find_blocks(net, ["Block"])] == ["layers.0", "layers.1", "layers.2"]
    assert [n for n, _ in find_blocks(net, ["layers.*", "layers.1.fc1"])] == ["layers.0", "layers.1", "layers.2"]
    assert [n for n, _ in find_blocks(net, ["head"])] == ["head"]
    with pytest.raises(ConfigError, match="'layer.*' matches no module of Net.*dotted module name"):
        find_blocks(net, ["layer.*"])


def test_activation_checkpointing_gives_the_same_outputs_and_gradients():
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(6, 10), *[scenarios.Block(10) for _ in range(3)], nn.Dropout(0.2), nn.Linear(10, 3))
    plain[1].fc1 = nn.Sequential(nn.Linear(10, 13), nn.Dropout(0.5))  # dropout inside a block: replayed in backward
    checkpointed = copy.deepcopy(plain)
    checkpoint_activations(find_blocks(checkpointed))
    x = torch.randn(16, 6, requires_grad=True)
    outputs = []
    for model in (plain, checkpointed):
        torch.manual_seed(1)
        out = model(x)
        out.square().sum().backward()
        outputs.append((out.detach(), x.grad.clone(), {n: p.grad.clone() for n, p in model.named_parameters()}))
        x.grad = None
    (out_a, dx_a, grads_a), (out_b, dx_b, grads_b) = outputs
    assert torch.equal(out_a, out_b) and torch.equal(dx_a, dx_b)
    assert grads_a.keys() == grads_b.keys()  # parameter names unchanged
    for name in grads_a:
        assert torch.equal(grads_a[name], grads_b[name]), name
    assert list(plain.state_dict()) == list(checkpointed.state_dict())


def test_the_trainer_option_checkpoints_the_blocks_and_trains_alike():
    weights = []
    for checkpointing in (False, True):
        trainer = scenarios.trainer(None, activation_checkpointing=checkpointing, max_epochs=1)
        trainer.fit(scenarios.loaders(1)[0])
        weights.append(trainer.unwrapped_model.state_dict())
    for name, value in weights[0].items():
        assert torch.equal(value, weights[1][name]), name
    with pytest.warns(UserWarning, match="no repeated blocks to checkpoint"):
        ws.Trainer(nn.Linear(2, 2), activation_checkpointing=True, device="cpu")
