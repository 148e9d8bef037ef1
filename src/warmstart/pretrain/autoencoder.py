"""Unsupervised pretraining: a convolutional autoencoder and a trainer that learns by reconstruction."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from warmstart.errors import ConfigError, DataError
from warmstart.trainer import Trainer

LOSSES = ("mse", "bce")


class ConvAutoencoder(nn.Module):
    """An encoder of two stride-2 conv blocks and a linear code, and its mirror-image decoder.

    The encoder (``self.encoder``) maps ``(B, C, S, S)`` to ``(B, latent)`` and is what finetune
    reuses as a backbone (:func:`encoder_classifier`); the decoder maps codes back to images. The
    decoder outputs unbounded values: reconstructions for MSE, logits for BCE.

    Args:
        in_channels: image channels (1 for digits, 3 for CIFAR).
        image_size: image side, divisible by 4 (28 or 32).
        width: channels of the first conv block (the second has twice as many).
        latent: size of the code.

    Examples:
        >>> ae = conv_autoencoder(in_channels=1, image_size=28)
        >>> ae(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 1, 28, 28])
    """

    def __init__(self, in_channels: int = 1, image_size: int = 28, width: int = 32, latent: int = 64):
        super().__init__()
        if image_size % 4:
            raise ConfigError(f"image_size must be divisible by 4 (two stride-2 stages), got {image_size}")
        side = image_size // 4
        self.latent = latent
        self.encoder = nn.Sequential(OrderedDict(
            block1=nn.Sequential(nn.Conv2d(in_channels, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)),
            block2=nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(inplace=True)),
            code=nn.Sequential(nn.Flatten(), nn.Linear(2 * width * side * side, latent)),
        ))
        self.decoder = nn.Sequential(OrderedDict(
            expand=nn.Sequential(nn.Linear(latent, 2 * width * side * side), nn.ReLU(inplace=True),
                                 nn.Unflatten(1, (2 * width, side, side))),
            block1=nn.Sequential(nn.ConvTranspose2d(2 * width, width, 3, stride=2, padding=1, output_padding=1),
                                 nn.BatchNorm2d(width), nn.ReLU(inplace=True)),
            block2=nn.ConvTranspose2d(width, in_channels, 3, stride=2, padding=1, output_padding=1),
        ))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct ``x``: ``decoder(encoder(x))``, shape ``(B, C, S, S)``."""
        return self.decoder(self.encoder(x))


def conv_autoencoder(in_channels: int = 1, image_size: int = 28, width: int = 32, latent: int = 64) -> ConvAutoencoder:
    """Build a :class:`ConvAutoencoder` for 1x28x28 (digits) or 3x32x32 (CIFAR) images."""
    return ConvAutoencoder(in_channels, image_size, width, latent)


def encoder_classifier(encoder: nn.Module, latent: int, num_classes: int) -> nn.Sequential:
    """A classifier that reuses a pretrained encoder as its backbone: ``head(relu(encoder(x)))``.

    The top-level children ``encoder`` and ``head`` are the layer groups finetune freezes and unfreezes.

    Examples:
        >>> ae = conv_autoencoder()
        >>> model = encoder_classifier(ae.encoder, ae.latent, num_classes=10)
        >>> model(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """
    return nn.Sequential(OrderedDict(encoder=encoder, act=nn.ReLU(), head=nn.Linear(latent, num_classes)))


class AutoencoderTrainer(Trainer):
    """Train an autoencoder to reconstruct its (clean) input, optionally from a corrupted copy.

    ``compute_loss`` takes the first element of each batch as the input ``x`` (labels are
    ignored), corrupts it while training (Gaussian ``noise``, then ``mask``: each pixel set to 0
    with that probability) and returns the reconstruction loss against the clean ``x``:
    ``mse_loss(model(x_tilde), x)`` or ``binary_cross_entropy_with_logits(model(x_tilde), x)``
    (mean over all elements). BCE needs inputs in [0, 1]. Validation reconstructs clean inputs.

    Args:
        model: maps ``x`` to a tensor of the same shape (e.g. :class:`ConvAutoencoder`).
        optimizer: as for :class:`warmstart.Trainer`.
        loss: ``"mse"`` or ``"bce"`` (decoder outputs are logits).
        noise: standard deviation of Gaussian input noise (denoising autoencoder).
        mask: probability of zeroing each input element (masking noise).
        **kwargs: :class:`warmstart.Trainer` arguments.

    Examples:
        >>> ae = conv_autoencoder(width=4, latent=8)
        >>> trainer = AutoencoderTrainer(ae, loss="mse", noise=0.1, progress=False)
        >>> history = trainer.fit([(torch.randn(4, 1, 28, 28),)])
    """

    def __init__(self, model: nn.Module, optimizer: Any = None, *, loss: str = "mse", noise: float = 0.0,
                 mask: float = 0.0, **kwargs: Any):
        if loss not in LOSSES:
            raise ConfigError(f"unknown reconstruction loss '{loss}'; use 'mse' or 'bce'")
        if noise < 0 or not 0.0 <= mask < 1.0:
            raise ConfigError(f"noise must be >= 0 and mask in [0, 1), got noise={noise}, mask={mask}")
        super().__init__(model, optimizer, **kwargs)
        self.loss, self.noise, self.mask = loss, noise, mask
        self._shape_checked = False

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        """Noisy/masked copy of ``x`` for denoising; ``x`` itself when no corruption is set."""
        if self.noise:
            x = x + self.noise * torch.randn_like(x)
        if self.mask:
            x = x * (torch.rand_like(x) >= self.mask)
        return x

    def compute_loss(self, batch: Any) -> dict[str, torch.Tensor]:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        corrupted = self.corrupt(x) if self.unwrapped_model.training else x
        reconstruction = self.model(corrupted)
        if not self._shape_checked:
            self._check(x, reconstruction)
        if self.loss == "bce":
            loss = F.binary_cross_entropy_with_logits(reconstruction.float(), x.float())
        else:
            loss = F.mse_loss(reconstruction.float(), x.float())
        return {"loss": loss, "output": reconstruction}

    def _check(self, x: torch.Tensor, reconstruction: torch.Tensor) -> None:
        """One host read on the first batch: shapes agree, and BCE targets lie in [0, 1]."""
        self._shape_checked = True
        if reconstruction.shape != x.shape:
            raise ConfigError(f"the decoder's output shape {tuple(reconstruction.shape)} differs from the input shape "
                              f"{tuple(x.shape)}; make the decoder mirror the encoder (e.g. conv_autoencoder with the "
                              "input's channels and image_size)")
        if self.loss == "bce" and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
            raise DataError("loss='bce' needs inputs in [0, 1] (got values outside it: normalised data?); load the "
                            "data with normalize=False or use loss='mse'")
