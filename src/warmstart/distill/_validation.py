"""Validation of a student against the hard labels alone, for trainers whose training loss needs more than the batch."""

from __future__ import annotations

from typing import Any

import torch

from warmstart._batches import classification_sums, run_model, split_batch
from warmstart.trainer import Trainer


def hard_label_sums(trainer: Trainer, batch: Any) -> dict[str, torch.Tensor]:
    """Per-batch sums of ``trainer.loss_fn`` (as ``loss``) and accuracy of ``trainer.model`` against the labels."""
    inputs, target = split_batch(batch)
    with trainer.autocast():
        output = run_model(trainer.model, inputs)
        loss = trainer.loss_fn(output, trainer.check_targets(output, target))
    return classification_sums(output, target, {"loss": loss}, trainer.device)
