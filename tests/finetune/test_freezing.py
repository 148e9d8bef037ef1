"""Freezing: frozen parameters and BatchNorm statistics do not change at all, through model.train() too."""

from __future__ import annotations

import copy

import pytest
import torch
from torchvision.models import efficientnet_b0, resnet18

import warmstart as ws
from warmstart.errors import ConfigError
from warmstart.finetune import freeze, freeze_to, frozen_state, layer_groups, unfreeze
from warmstart.finetune.freezing import restore_frozen_state


def _images(n: int = 32, classes: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, classes, (8,), generator=g)) for _ in range(n // 8)]


def _bytes(model: torch.nn.Module, prefix: str = "") -> dict[str, bytes]:
    return {k: v.cpu().numpy().tobytes() for k, v in model.state_dict().items() if k.startswith(prefix)}


def test_frozen_parts_get_no_update_of_any_kind_for_an_epoch():
    torch.manual_seed(0)
    model = resnet18(num_classes=4)
    frozen = freeze(model, except_="fc")
    assert len(frozen) == len(list(model.parameters())) - 2
    before = _bytes(model)
    # an optimizer over every parameter, with momentum and weight decay: frozen ones must still not move
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.5)
    ws.Trainer(model, optimizer, max_epochs=1, progress=False).fit(_images())
    after = _bytes(model)
    moved = {k for k in before if before[k] != after[k]}
    assert moved == {"fc.weight", "fc.bias"}  # BatchNorm running statistics and counters included
    assert model.training and not model.bn1.training  # fit left the model training, its frozen BatchNorm not


def test_batchnorm_stays_in_eval_through_train_unless_asked():
    model = resnet18()
    freeze(model, "layer1")
    model.train()
    assert not model.layer1[0].bn1.training and model.layer2[0].bn1.training
    clone = copy.deepcopy(model)
    clone.train()
    assert not clone.layer1[0].bn1.training
    unfreeze(model, "layer1")
    assert model.layer1[0].bn1.training and model.layer1[0].conv1.weight.requires_grad
    model.eval()
    assert not model.layer1[0].bn1.training

    trained_bn = resnet18()
    freeze(trained_bn, except_="fc", train_bn=True)
    trained_bn.train()
    assert trained_bn.bn1.training and trained_bn.bn1.weight.requires_grad and not trained_bn.conv1.weight.requires_grad
    before = trained_bn.bn1.running_mean.clone()
    trained_bn(torch.randn(2, 3, 32, 32))
    assert not torch.equal(before, trained_bn.bn1.running_mean)


def test_layer_groups_and_freeze_to():
    model = resnet18()
    assert [g.name for g in layer_groups(model)] == ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"]
    freeze_to(model, -2)
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"layer4", "fc"}
    model.train()
    assert not model.layer3[0].bn1.training and model.layer4[0].bn1.training
    freeze_to(model, 0)
    assert all(p.requires_grad for p in model.parameters()) and model.layer3[0].bn1.training
    with pytest.raises(ConfigError, match="out of range for 7 layer groups"):
        freeze_to(model, 9)

    eff = [g.name for g in layer_groups(efficientnet_b0())]  # features: 9 stages, split into groups
    assert eff[:2] == ["features.0", "features.1"] and eff[-1] == "classifier" and len(eff) == 10
    custom = layer_groups(model, groups=[["conv1", "bn1"], "layer*", "fc"])
    assert [len(g.modules) for g in custom] == [2, 4, 1]


def test_patterns_that_match_nothing_are_errors_and_state_round_trips():
    model = resnet18()
    with pytest.raises(ConfigError, match="pattern 'layer9' matches no module of ResNet; its top-level modules are: conv1"):
        freeze(model, "layer9")
    freeze(model, except_=["layer4", "fc"])
    state = frozen_state(model)
    fresh = resnet18()
    restore_frozen_state(fresh, state)
    assert frozen_state(fresh) == state
    assert "layer1.0.bn1" in state["batchnorm"] and "layer4.0.bn1" not in state["batchnorm"]
