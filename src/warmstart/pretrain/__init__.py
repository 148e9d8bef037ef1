"""Pretraining: the proximal (L2-SP family) objective, supervised pretraining output, autoencoders."""

from warmstart.pretrain.autoencoder import AutoencoderTrainer, ConvAutoencoder, conv_autoencoder, encoder_classifier
from warmstart.pretrain.proximal import ProximalTrainer
from warmstart.proximal import Anchor, ProximalTerm, proximal_penalty
from warmstart.pretrain.supervised import save_pretrained

__all__ = [
    "Anchor",
    "AutoencoderTrainer",
    "ConvAutoencoder",
    "ProximalTerm",
    "ProximalTrainer",
    "conv_autoencoder",
    "encoder_classifier",
    "proximal_penalty",
    "save_pretrained",
]
