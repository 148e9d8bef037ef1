"""Augmentation presets: torchvision v2 per sample, the batched affine, fill values and randomness detection."""

import pytest
import torch
from torchvision.transforms import v2

from warmstart.data import PRESETS, BatchAugment, build_augmentation, is_random
from warmstart.data.augment import AugmentConfig
from warmstart.errors import ConfigError


def test_presets_and_mappings_build_torchvision_v2_pipelines():
    cifar = build_augmentation("cifar", size=32)
    assert isinstance(cifar, v2.Compose) and is_random(cifar)
    assert [type(t).__name__ for t in cifar.transforms] == ["RandomCrop", "RandomHorizontalFlip"]
    out = cifar(torch.rand(3, 32, 32))
    assert out.shape == (3, 32, 32)
    assert build_augmentation("none") is None and build_augmentation(None) is None
    jitter = build_augmentation({"brightness": 0.2, "rotation": 5})
    assert [type(t).__name__ for t in jitter.transforms] == ["RandomAffine", "ColorJitter"]
    assert set(PRESETS) >= {"none", "digits", "cifar", "cifar_strong"}


def test_unknown_names_and_keys_are_named():
    with pytest.raises(ConfigError, match="unknown augmentation preset 'cifr'.*did you mean 'cifar'"):
        build_augmentation("cifr")
    with pytest.raises(ConfigError, match="unknown config key 'augment.rotate'.*'rotation'"):
        build_augmentation({"rotate": 10})
    with pytest.raises(ConfigError, match="flip is a probability"):
        AugmentConfig(flip=2)
    with pytest.raises(ConfigError, match="does not do saturation or hue"):
        build_augmentation("cifar_strong", batched=True)
    with pytest.raises(ConfigError, match="pass size= the image side"):
        build_augmentation("cifar")


def test_batched_affine_with_nothing_drawn_is_the_identity_and_fills_blank_pixels():
    x = torch.randn(4, 1, 8, 8)
    same = BatchAugment(AugmentConfig(rotation=1e-9))
    torch.testing.assert_close(same(x), x, atol=1e-5, rtol=0)
    shifted = BatchAugment(AugmentConfig(translate=0.5), fill=-0.5)
    torch.manual_seed(0)
    out = shifted(torch.full((64, 1, 8, 8), -0.5))
    torch.testing.assert_close(out, torch.full_like(out, -0.5))  # a blank image stays blank: the fill, not 0


def test_batched_flip_mirrors_each_sample_and_draws_per_sample():
    x = torch.arange(16.0).reshape(1, 1, 4, 4).repeat(2, 1, 1, 1)
    flipped = BatchAugment(AugmentConfig(flip=1.0))(x)
    torch.testing.assert_close(flipped, x.flip(-1))
    torch.manual_seed(0)
    rotated = BatchAugment(AugmentConfig(rotation=30))(torch.rand(1, 1, 16, 16).repeat(8, 1, 1, 1))
    assert not torch.allclose(rotated[0], rotated[1])


def test_randomness_is_detected_through_compose():
    assert is_random(v2.Compose([v2.ToDtype(torch.float32), v2.RandomRotation(5)]))
    assert is_random(v2.RandomCrop(8, padding=2)) and is_random(build_augmentation("digits", batched=True))
    assert not is_random(v2.Compose([v2.ToDtype(torch.float32)])) and not is_random(None)


def test_padded_crop_fills_with_the_given_value():
    torch.manual_seed(0)
    crop = build_augmentation({"crop_padding": 4}, fill=-1.0, size=8)
    out = torch.stack([crop(torch.zeros(1, 8, 8)) for _ in range(20)])
    assert out.shape == (20, 1, 8, 8) and set(out.unique().tolist()) <= {-1.0, 0.0} and (out == -1.0).any()
