"""transfer_layers: copy the first layer groups, freeze them for real, refuse groups that differ."""

import pytest
import torch

from warmstart.errors import ConfigError
from warmstart.finetune import transfer_layers
from warmstart.models import small_cnn


def test_copies_the_first_groups_only_and_freezes_them_with_their_batchnorm():
    torch.manual_seed(0)
    source, target = small_cnn(width=4), small_cnn(num_classes=3, width=4)
    block2_before = target.block2[0].weight.clone()
    copied = transfer_layers(source, target, n=1, freeze=True)
    assert copied == [f"block1.{k}" for k in source.block1.state_dict()]
    assert torch.equal(target.block1[0].weight, source.block1[0].weight)
    assert torch.equal(target.block2[0].weight, block2_before)  # the rest keeps its own initialisation
    assert not any(p.requires_grad for p in target.block1.parameters())
    assert all(p.requires_grad for p in target.block2.parameters())
    target.train()
    stats = target.block1[1].running_mean.clone()
    target(torch.randn(8, 1, 28, 28) + 3)
    assert torch.equal(target.block1[1].running_mean, stats) and not target.block2[1].running_mean.eq(0).all()


def test_groups_that_differ_are_refused():
    with pytest.raises(ConfigError, match="layer group 'block1' differs between the models"):
        transfer_layers(small_cnn(width=4), small_cnn(width=8), n=1)
    with pytest.raises(ConfigError, match="cannot transfer 9 layer groups"):
        transfer_layers(small_cnn(width=4), small_cnn(width=4), n=9)
