"""Autoencoder pretraining: reconstruction on real digits, denoising, encoder reuse and bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from warmstart.data import InMemoryLoader, digits
from warmstart.errors import ConfigError, DataError
from warmstart.pretrain import AutoencoderTrainer, conv_autoencoder, encoder_classifier


def test_autoencoder_learns_to_reconstruct_real_digits():
    torch.manual_seed(0)
    data = digits(size=28, normalize=False)
    ae = conv_autoencoder(width=8, latent=32)
    trainer = AutoencoderTrainer(ae, {"name": "adam", "lr": 3e-3}, loss="bce", noise=0.2, max_epochs=4,
                                 progress=False)
    test = InMemoryLoader(data.test, batch_size=256)
    before = trainer.evaluate(test)["loss"]
    history = trainer.fit(InMemoryLoader(data.train, batch_size=64, shuffle=True), test)
    assert history[-1]["val_loss"] < 0.6 * before
    # validation reconstructs clean inputs: recompute it by hand
    x = data.test.tensors[0]
    ae.eval()
    with torch.no_grad():
        expected = F.binary_cross_entropy_with_logits(ae(x), x).item()
    assert history[-1]["val_loss"] == pytest.approx(expected, rel=1e-4)


def test_corruption_is_noise_then_masking_and_only_in_training():
    trainer = AutoencoderTrainer(conv_autoencoder(width=4, latent=4), noise=0.5, mask=0.5, progress=False)
    torch.manual_seed(0)
    x = torch.ones(2000)
    corrupted = trainer.corrupt(x)
    zeros = (corrupted == 0).float().mean().item()
    assert 0.45 < zeros < 0.55
    assert 0.4 < corrupted[corrupted != 0].std().item() < 0.6
    assert torch.equal(AutoencoderTrainer(conv_autoencoder(width=4, latent=4), progress=False).corrupt(x), x)


def test_the_encoder_is_reused_as_a_classifier_backbone():
    ae = conv_autoencoder(in_channels=3, image_size=32, width=4, latent=16)
    assert ae(torch.zeros(2, 3, 32, 32)).shape == (2, 3, 32, 32)
    model = encoder_classifier(ae.encoder, ae.latent, num_classes=5)
    assert model.encoder is ae.encoder  # the very weights pretraining learned
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 5)


def test_bad_input_is_refused_with_a_clear_error():
    with pytest.raises(ConfigError, match="unknown reconstruction loss 'l1'"):
        AutoencoderTrainer(conv_autoencoder(), loss="l1")
    with pytest.raises(ConfigError, match="mask in \\[0, 1\\)"):
        AutoencoderTrainer(conv_autoencoder(), mask=1.0)
    with pytest.raises(ConfigError, match="divisible by 4"):
        conv_autoencoder(image_size=30)
    wrong = nn.Sequential(nn.Conv2d(1, 1, 3), nn.Identity())  # 28x28 -> 26x26
    with pytest.raises(ConfigError, match=r"decoder's output shape \(4, 1, 26, 26\) differs from the input shape \(4, 1, 28, 28\)"):
        AutoencoderTrainer(wrong, progress=False).fit([(torch.rand(4, 1, 28, 28),)])
    normalised = digits(size=28).train
    with pytest.raises(DataError, match="loss='bce' needs inputs in \\[0, 1\\]"):
        AutoencoderTrainer(conv_autoencoder(width=4, latent=4), loss="bce", progress=False).fit(
            InMemoryLoader(normalised, batch_size=32))
