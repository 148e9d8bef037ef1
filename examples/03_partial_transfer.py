"""Keras-style partial transfer: reuse only the first layers of a pretrained CNN, frozen, and train the rest.

Pretrain ``small_cnn`` on ``mnist5k``, then for each ``n`` in ``--layers`` build a fresh network for
the UCI digits (10 labels per class), copy the pretrained weights of its first ``n`` layer groups
(:func:`warmstart.finetune.transfer_layers`), freeze them with :func:`warmstart.finetune.freeze_to`
(BatchNorm statistics included) and train everything above from its random initialisation. ``n = 0``
is training from scratch. The same thing in one argument is the ``Partial`` fine-tuning method::

    ws.finetune.load_pretrained(model, weights)
    ws.finetune.FinetuneTrainer(model, method=ws.finetune.Partial(k=n, reinit_rest=True), ...)

Run::

    python examples/03_partial_transfer.py            # under a minute on 2 CPU cores
    python examples/03_partial_transfer.py --dry-run  # a few steps on fake data, seconds
"""

from __future__ import annotations

import argparse


import warmstart as ws
from warmstart.data import InMemoryLoader, fake_splits



def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[0, 1, 2, 3],
                        help="numbers of pretrained layer groups to transfer and freeze (0: from scratch)")
    parser.add_argument("--pretrain-epochs", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=30, help="training epochs on the target task")
    parser.add_argument("--shots", type=int, default=10, help="labelled target examples per class")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dry-run", action="store_true", help="a few steps on fake data, to check the script runs")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        source, target = fake_splits(64, 32), fake_splits(40, 40)
        args.pretrain_epochs, args.epochs, args.shots = 1, 1, 2
    else:
        source, target = ws.data.mnist5k(), ws.data.digits(size=28)
    augment = ws.data.build_augmentation("digits", fill=source.background, batched=True)
    optimizer = {"name": "adamw", "lr": 3e-3, "weight_decay": 0.01}

    ws.seed_everything(args.seed)
    pretrained = ws.models.small_cnn(width=16)
    ws.Trainer(pretrained, optimizer, scheduler={"name": "cosine"}, max_epochs=args.pretrain_epochs,
               seed=args.seed).fit(InMemoryLoader(source.train, batch_size=64, shuffle=True, transform=augment))
    groups = [g.name for g in ws.finetune.layer_groups(pretrained)]
    print(f"pretrained on {source.name}; layer groups: {', '.join(groups)}")

    train = InMemoryLoader(ws.data.few_shot_split(target.train, k=args.shots, seed=args.seed), batch_size=32,
                           shuffle=True, seed=args.seed, transform=augment)
    test = InMemoryLoader(target.test, batch_size=500)
    for n in args.layers:
        ws.seed_everything(args.seed)
        model = ws.models.small_cnn(width=16)
        if n:
            copied = ws.finetune.transfer_layers(pretrained, model, n=n)
            ws.finetune.freeze_to(model, n)  # requires_grad=False and BatchNorm kept in eval mode
        else:
            copied = []
        trainer = ws.Trainer(model, optimizer, scheduler={"name": "cosine"}, max_epochs=args.epochs,
                             seed=args.seed, progress=False)  # the optimizer only gets the trainable parameters
        trainer.fit(train)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        accuracy = trainer.evaluate(test)["accuracy"]
        print(f"transfer {n} group(s) {'(' + ', '.join(groups[:n]) + ')' if n else '(scratch)':<32} "
              f"{len(copied):2d} tensors copied, {trainable:6d} trainable parameters: test accuracy {accuracy:.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
