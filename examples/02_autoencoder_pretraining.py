"""Unsupervised pretraining: a denoising autoencoder on unlabelled MNIST, then a classifier from 100 labels.

1. Train :func:`warmstart.pretrain.conv_autoencoder` with :class:`warmstart.pretrain.AutoencoderTrainer`
   to reconstruct clean images from noisy ones, on all 4,000 ``mnist5k`` training images, labels unused
   (batches are just ``(x,)``: ``InMemoryLoader(images, None)``).
2. Reuse its encoder as a backbone: :func:`warmstart.pretrain.encoder_classifier` adds a linear head.
3. Train it on 10 labelled images per class, twice: a linear probe (encoder frozen, only the head
   trains, on cached features) and full fine-tuning (:func:`warmstart.finetune.fine_tune`); and the
   same from a random encoder, to see what the pretraining bought.

Run::

    python examples/02_autoencoder_pretraining.py            # under a minute on 2 CPU cores
    python examples/02_autoencoder_pretraining.py --dry-run  # a few steps on fake data, seconds
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from torch import nn

import warmstart as ws
from warmstart.data import InMemoryLoader, fake_splits



def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pretrain-epochs", type=int, default=8)
    parser.add_argument("--finetune-epochs", type=int, default=30)
    parser.add_argument("--shots", type=int, default=10, help="labelled examples per class")
    parser.add_argument("--noise", type=float, default=0.5, help="std of the Gaussian input noise (denoising)")
    parser.add_argument("--latent", type=int, default=64, help="size of the autoencoder's code")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=None, help="where to save the encoder (default: runs/02_autoencoder; a dry run: a temporary folder)")
    parser.add_argument("--dry-run", action="store_true", help="a few steps on fake data, to check the script runs")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dry_run and args.out_dir is None:  # a dry run leaves nothing behind
        with tempfile.TemporaryDirectory() as folder:
            args.out_dir = Path(folder)
            return run(args)
    return run(args)


def run(args: argparse.Namespace) -> int:
    out_dir = args.out_dir or Path("runs/02_autoencoder")
    if args.dry_run:
        data = fake_splits(64, 32)
        args.pretrain_epochs, args.finetune_epochs, args.shots = 1, 1, 2
    else:
        data = ws.data.mnist5k()
    images = data.train.tensors[0]

    # 1. Denoising autoencoder on the unlabelled training images.
    ws.seed_everything(args.seed)
    autoencoder = ws.pretrain.conv_autoencoder(in_channels=1, image_size=28, width=16, latent=args.latent)
    trainer = ws.pretrain.AutoencoderTrainer(autoencoder, {"name": "adamw", "lr": 3e-3}, loss="mse", noise=args.noise,
                                             scheduler={"name": "cosine"}, max_epochs=args.pretrain_epochs,
                                             seed=args.seed)
    trainer.fit(InMemoryLoader(images, None, batch_size=64, shuffle=True, seed=args.seed),
                InMemoryLoader(data.test.tensors[0], None, batch_size=500))
    print(f"autoencoder: test reconstruction MSE {trainer.history[-1]['val_loss']:.4f}")
    encoder_path = out_dir / "encoder.safetensors"
    ws.save_weights(encoder_path, autoencoder.encoder.state_dict(), {"latent": args.latent})

    # 2-3. A classifier on the encoder, trained on a few labels; the same from a random encoder.
    labelled = ws.data.few_shot_split(data.train, k=args.shots, seed=args.seed)
    augment = ws.data.build_augmentation("digits", fill=data.background, batched=True)
    train = InMemoryLoader(labelled, batch_size=32, shuffle=True, seed=args.seed, transform=augment)
    test = InMemoryLoader(data.test, batch_size=500)
    print(f"classifiers: {len(labelled)} labelled training images, {len(data.test)} test images")

    for name in ("autoencoder", "scratch"):
        for method in ("linear probe", "fine-tune"):
            ws.seed_everything(args.seed)
            encoder: nn.Module = ws.pretrain.conv_autoencoder(width=16, latent=args.latent).encoder
            if name == "autoencoder":
                encoder.load_state_dict(ws.load_weights(encoder_path)[0])
            model = ws.pretrain.encoder_classifier(encoder, args.latent, num_classes=data.num_classes)
            if method == "linear probe":  # frozen encoder: how linearly useful its code is
                trainer = ws.finetune.FinetuneTrainer(model, {"name": "adamw", "lr": 3e-3}, method="linear_probe",
                                                      max_epochs=args.finetune_epochs, seed=args.seed, progress=False)
                trainer.fit(train)
            else:  # everything trains, as fine_tune chooses on held-out labels (random weights: its fixed recipe)
                trainer = ws.finetune.fine_tune(model, train, epochs=args.finetune_epochs, freeze_epochs=2,
                                                select=name == "autoencoder", seed=args.seed, progress=False).trainer
            accuracy = trainer.evaluate(test)["accuracy"]
            print(f"{method:<12} encoder from {name:<11}: test accuracy {accuracy:.1%}")
    print(f"pretrained encoder: {encoder_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
