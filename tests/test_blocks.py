"""Repeated blocks are found (transformer layers, ResNet blocks, none in an MLP); activation checkpointing changes nothing (outputs, gradients, buffers)."""

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


class ConvBlock(nn.Module):
    """A residual conv block with BatchNorm (``momentum=None``: the cumulative average over ``num_batches_tracked``)."""

    def __init__(self, channels: int, momentum: float | None):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(channels, momentum=momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.relu(self.norm(self.conv(x)))  # (B, C, H, W)


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), ConvBlock(4, 0.1), ConvBlock(4, None),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


def test_recomputation_leaves_batchnorm_statistics_alone():
    g = torch.Generator().manual_seed(2)
    batches = [(torch.randn(8, 3, 6, 6, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(3)]
    assert [name for name, _ in find_blocks(small_cnn())] == ["1", "2"]  # the two ConvBlocks are checkpointed
    runs = []
    for checkpointing in (False, True):
        model = small_cnn()
        trainer = ws.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), max_epochs=2, device="cpu",
                             activation_checkpointing=checkpointing, progress=False)
        trainer.fit(batches)
        runs.append((model.state_dict(), trainer.evaluate(batches)))
    (plain, plain_metrics), (checkpointed, checkpointed_metrics) = runs
    assert plain.keys() == checkpointed.keys()
    for name in plain:  # parameters, running_mean, running_var and num_batches_tracked of both blocks
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-6, atol=1e-7,
                                   msg=lambda message, name=name: f"{name}: {message}")
    assert int(checkpointed["2.norm.num_batches_tracked"]) == 6  # one update per step (2 epochs x 3), not two
    assert checkpointed_metrics == plain_metrics


def test_recomputation_restores_any_buffer_the_forward_changes():
    class CountingBlock(nn.Module):  # a buffer updated in forward, as a running normalizer's would be
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.register_buffer("calls", torch.zeros((), dtype=torch.long))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            return torch.tanh(self.fc(x))

    model = nn.Sequential(CountingBlock(), CountingBlock())
    checkpoint_activations(find_blocks(model))
    model(torch.randn(3, 4, requires_grad=True)).sum().backward()
    assert [int(block.calls) for block in model] == [1, 1]
