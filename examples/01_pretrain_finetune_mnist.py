"""Pretrain a small CNN on MNIST, then fine-tune it on a few labelled UCI digits with a new head.

The whole transfer-learning loop of warmstart on real, bundled data (no download):

1. pretrain ``small_cnn`` on ``mnist5k`` (4,000 MNIST digits, 10 classes) with :class:`warmstart.Trainer`;
2. save it with :func:`warmstart.pretrain.save_pretrained` (weights + head metadata);
3. build the same architecture for a *new* task, UCI digits 0-4 with 10 labels per class, swap its
   10-class head for a 5-class one (:func:`warmstart.finetune.swap_head`) and load the pretrained
   backbone (:func:`warmstart.finetune.load_pretrained`, which skips the old head and prints a report);
4. fine-tune with :func:`warmstart.finetune.fine_tune`, which chooses how (a linear-probe warm-up then
   everything with layer-wise rates, one rate, the first layers frozen, ...) on labels it holds out, and
   compare with the same fixed recipe trained from random weights. The test digits are scored once.

Run::

    python examples/01_pretrain_finetune_mnist.py            # about a minute on 2 CPU cores
    python examples/01_pretrain_finetune_mnist.py --dry-run  # a few steps on fake data, seconds
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from torch.utils.data import TensorDataset

import warmstart as ws
from warmstart.data import InMemoryLoader, fake_splits



def first_classes(dataset: TensorDataset, num_classes: int) -> TensorDataset:
    """Keep the samples whose label is below ``num_classes`` (digits 0..num_classes-1)."""
    images, labels = dataset.tensors
    keep = labels < num_classes
    return TensorDataset(images[keep], labels[keep])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pretrain-epochs", type=int, default=6)
    parser.add_argument("--finetune-epochs", type=int, default=30)
    parser.add_argument("--shots", type=int, default=10, help="labelled target examples per class")
    parser.add_argument("--classes", type=int, default=5, help="the target task: digits 0..classes-1")
    parser.add_argument("--width", type=int, default=16, help="channels of the CNN's first block")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=None, help="where to save the weights (default: runs/01_pretrain_finetune; a dry run: a temporary folder)")
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
    out_dir = args.out_dir or Path("runs/01_pretrain_finetune")
    if args.dry_run:
        source, target = fake_splits(64, 32), fake_splits(40, 40)
        args.pretrain_epochs, args.finetune_epochs, args.shots = 1, 1, 2
    else:
        source, target = ws.data.mnist5k(), ws.data.digits(size=28)  # digits drawn like MNIST: 20x20 in 28x28

    # 1-2. Pretrain on the source task and save the weights with their head metadata.
    ws.seed_everything(args.seed)
    model = ws.models.small_cnn(num_classes=source.num_classes, width=args.width)
    augment = ws.data.build_augmentation("digits", fill=source.background, batched=True)
    pretrainer = ws.Trainer(model, {"name": "adamw", "lr": 3e-3, "weight_decay": 0.01},
                            scheduler={"name": "cosine", "warmup_epochs": 0.5}, max_epochs=args.pretrain_epochs,
                            seed=args.seed)
    pretrainer.fit(InMemoryLoader(source.train, batch_size=64, shuffle=True, seed=args.seed, transform=augment))
    source_accuracy = pretrainer.evaluate(InMemoryLoader(source.test, batch_size=500))["accuracy"]
    print(f"pretrained on {source.name}: test accuracy {source_accuracy:.1%}")
    weights = ws.pretrain.save_pretrained(model, out_dir / "pretrained.safetensors", source=source.name,
                                          accuracy=source_accuracy)

    # 3. The target task: digits 0..classes-1, `shots` labels per class; the rest of its test half scores.
    train_set = ws.data.few_shot_split(first_classes(target.train, args.classes), k=args.shots, seed=args.seed)
    test_set = first_classes(target.test, args.classes)
    train = InMemoryLoader(train_set, batch_size=32, shuffle=True, seed=args.seed, transform=augment)
    test = InMemoryLoader(test_set, batch_size=500)
    print(f"target task: {args.classes} classes, {len(train_set)} labelled images, {len(test_set)} test images")

    accuracies = {}
    for name in ("pretrained", "scratch"):
        ws.seed_everything(args.seed)
        model = ws.models.small_cnn(num_classes=source.num_classes, width=args.width)  # the pretrained architecture
        swap = ws.finetune.swap_head(model, num_classes=args.classes) if args.classes != source.num_classes else None
        if name == "pretrained":
            print(swap or "same classes: the pretrained head is kept")
            print(ws.finetune.load_pretrained(model, weights))

        # 4. One-call fine-tuning: it chooses how (head-only warm-up then everything, one rate, LoRA, ...) by
        #    cross-validation over the labels, never on the test set; on labels this few no choice can be told from
        #    noise, so it trains the recipe and the full fine-tune and averages them. The control is the same call
        #    on random weights (the same trainings and steps).
        result = ws.finetune.fine_tune(model, train, epochs=args.finetune_epochs, freeze_epochs=2, seed=args.seed,
                                       progress=False)
        accuracies[name] = ws.evaluate(result.model, test)["accuracy"]

    print(f"fine-tuned from {source.name}: test accuracy {accuracies['pretrained']:.1%}")
    print(f"trained from scratch:     test accuracy {accuracies['scratch']:.1%}")
    print(f"pretrained weights: {weights}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
