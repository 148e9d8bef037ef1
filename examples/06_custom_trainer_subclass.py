"""Extend the Trainer: a focal-loss trainer that logs extra loss terms and its own validation metrics.

Subclass :class:`warmstart.Trainer` and override the step methods, as the library's own trainers do
(``ProximalTrainer``, ``DistillTrainer``, ``AutoencoderTrainer``):

- ``compute_loss(batch)`` returns a dict: ``"loss"`` (backpropagated), ``"output"`` (the logits,
  for accuracy) and any other scalar terms, which are logged as ``train_<name>``;
- ``validation_step(batch)`` returns per-batch *sums* (and ``"count"``); the Trainer adds them up over
  the loader (and over processes under torchrun) and divides by the count.

Focal loss (Lin et al., 2017) scales each sample's cross-entropy by ``(1 - p_true) ** gamma``, so
easy, confident examples count less; ``gamma = 0`` is plain cross-entropy. The script trains on
``mnist5k`` with each ``--gammas`` value and prints accuracy, mean confidence and their gap
(over-confidence), the calibration effect focal loss is known for.

Run::

    python examples/06_custom_trainer_subclass.py            # about a minute on 2 CPU cores
    python examples/06_custom_trainer_subclass.py --dry-run  # a few steps on fake data, seconds
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import warmstart as ws
from warmstart.data import InMemoryLoader, fake_splits


class FocalLossTrainer(ws.Trainer):
    """Train a classifier with the focal loss ``-(1 - p_true) ** gamma * log(p_true)``.

    Args:
        model: the classifier (outputs logits).
        optimizer: as for :class:`warmstart.Trainer`.
        gamma: focusing parameter (0: cross-entropy).
        **kwargs: :class:`warmstart.Trainer` options.
    """

    def __init__(self, model: nn.Module, optimizer: Any = None, *, gamma: float = 2.0, **kwargs: Any):
        super().__init__(model, optimizer, **kwargs)
        self.gamma = gamma

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample focal loss and cross-entropy (in float32, also under autocast)."""
        log_p = F.log_softmax(logits.float(), dim=-1).gather(1, target[:, None]).squeeze(1)
        return -((1 - log_p.exp()) ** self.gamma) * log_p, -log_p

    def compute_loss(self, batch: Any) -> dict[str, torch.Tensor]:
        inputs, target = batch[0], batch[1]
        logits = self.model(inputs)
        focal, ce = self.per_sample(logits, target)
        return {"loss": focal.mean(), "output": logits, "ce": ce.mean()}  # "ce" is logged as train_ce

    def validation_step(self, batch: Any) -> dict[str, torch.Tensor]:
        inputs, target = batch[0], batch[1]
        with self.autocast():
            logits = self.model(inputs)
        focal, ce = self.per_sample(logits, target)
        confidence = logits.float().softmax(dim=-1).amax(dim=-1)
        return {"loss": focal.sum(), "ce": ce.sum(), "accuracy": (logits.argmax(-1) == target).sum().float(),
                "confidence": confidence.sum(), "count": torch.tensor(float(len(target)), device=self.device)}



def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gammas", type=float, nargs="+", default=[0.0, 2.0], help="focal-loss gammas to compare")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dry-run", action="store_true", help="a few steps on fake data, to check the script runs")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        data, args.epochs = fake_splits(64, 32), 1
    else:
        data = ws.data.mnist5k()
    train = InMemoryLoader(data.train, batch_size=64, shuffle=True, seed=args.seed)
    test = InMemoryLoader(data.test, batch_size=500)
    for gamma in args.gammas:
        ws.seed_everything(args.seed)
        trainer = FocalLossTrainer(ws.models.small_cnn(width=16), {"name": "adamw", "lr": 3e-3, "weight_decay": 0.01},
                                   gamma=gamma, scheduler={"name": "cosine"}, max_epochs=args.epochs, seed=args.seed)
        trainer.fit(train, test)  # prints train_loss, train_ce, val_loss, val_ce, val_accuracy, val_confidence
        m = trainer.evaluate(test)
        print(f"gamma {gamma:g}: test accuracy {m['accuracy']:.1%}, mean confidence {m['confidence']:.1%}, "
              f"over-confidence {m['confidence'] - m['accuracy']:+.1%}, cross-entropy {m['ce']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
