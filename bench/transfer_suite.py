"""Transfer on tasks the recipes were not tuned on: four source -> target pairs, every method beside its control.

Pairs built from the bundled data: the same classes (MNIST -> UCI digits), disjoint classes (MNIST 0-4 ->
UCI digits 5-9), the reverse direction (UCI digits -> MNIST) and another architecture (a small ResNet,
MNIST -> UCI digits). For each pair and seed, the model is pretrained on the whole source training split
(about 500 steps, "digits" augmentation), then for k = 5, 10, 20 labelled target images per class (the
rest of the target set is the test set) every method trains for the same epochs with the same
augmentation, loss (cross-entropy, label smoothing 0.1) and optimizer (AdamW 3e-3, weight decay 0.01,
cosine). Every model gets a new head. The controls train the same way from random weights:
"from scratch" for the single-method rows, "recipe, no pretraining" for the recipe rows. The
validated fine_tune() holds a fifth of the k labels out for its choice (no extra labels).

    python bench/transfer_suite.py               # about 30 minutes on 2 CPU cores (2 processes)
    python bench/transfer_suite.py --seeds 2 --shots 10 --pairs same   # a quick look
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import multiprocessing
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

import warmstart as ws
from warmstart.data import InMemoryLoader, build_augmentation, class_subset, digits, mnist5k, per_class_split
from warmstart.finetune import FinetuneTrainer, fine_tune
from warmstart.models import small_cnn, small_resnet

LOSS = functools.partial(F.cross_entropy, label_smoothing=0.1)
OPTIMIZER = {"name": "adamw", "lr": 3e-3, "weight_decay": 0.01}
PAIRS = {
    "same": ("same classes: MNIST -> UCI digits, small CNN", "mnist5k", "digits", None, None, "small_cnn"),
    "disjoint": ("disjoint classes: MNIST 0-4 -> UCI digits 5-9, small CNN", "mnist5k", "digits", [0, 1, 2, 3, 4],
                 [5, 6, 7, 8, 9], "small_cnn"),
    "reverse": ("reverse: UCI digits -> MNIST, small CNN", "digits", "mnist5k", None, None, "small_cnn"),
    "resnet": ("another architecture: MNIST -> UCI digits, small ResNet", "mnist5k", "digits", None, None,
               "small_resnet"),
}
METHODS = ["from scratch (control)", "linear probe", "full (backbone lr x0.1)", "fine_tune() fixed recipe",
           "fine_tune() validated", "fixed recipe, no pretraining (control)"]
CONTROL = {"linear probe": "from scratch (control)", "full (backbone lr x0.1)": "from scratch (control)",
           "fine_tune() fixed recipe": "fixed recipe, no pretraining (control)",
           "fine_tune() validated": "fixed recipe, no pretraining (control)"}


def _data(name: str, classes: list[int] | None) -> tuple[TensorDataset, TensorDataset, float]:
    splits = mnist5k() if name == "mnist5k" else digits(size=28)
    train, test = splits.train, splits.test
    if classes is not None:
        train, test = class_subset(train, classes), class_subset(test, classes)
    return train, test, splits.background


def _model(name: str, classes: int) -> torch.nn.Module:
    return small_cnn(num_classes=classes, width=16) if name == "small_cnn" else small_resnet(num_classes=classes, width=16)


def _pretrain(pair: str, seed: int) -> dict[str, torch.Tensor]:
    _, source, _, source_classes, _, architecture = PAIRS[pair]
    train, _, fill = _data(source, source_classes)
    torch.manual_seed(seed)
    model = _model(architecture, int(train.tensors[1].max()) + 1)
    epochs = math.ceil(500 / math.ceil(len(train) / 64))  # about 500 steps, whatever the source's size
    loader = InMemoryLoader(train, batch_size=64, shuffle=True, seed=seed,
                            transform=build_augmentation("digits", fill=fill, batched=True))
    ws.Trainer(model, OPTIMIZER, scheduler={"name": "cosine", "warmup_epochs": 0.5}, max_epochs=epochs,
               progress=False, seed=seed).fit(loader)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _train(method: str, model: torch.nn.Module, loader: InMemoryLoader, epochs: int, seed: int) -> Any:
    options = {"max_epochs": epochs, "progress": False, "seed": seed, "scheduler": {"name": "cosine"}}
    if method in ("from scratch (control)", "full (backbone lr x0.1)", "linear probe"):
        spec = {"from scratch (control)": {"name": "full", "backbone_lr_mult": 1.0},
                "full (backbone lr x0.1)": "full", "linear probe": "linear_probe"}[method]
        trainer = FinetuneTrainer(model, OPTIMIZER, LOSS, method=spec, **options)
        trainer.fit(loader)
        return trainer, None
    result = fine_tune(model, loader, epochs=epochs, optimizer=OPTIMIZER, select=method == "fine_tune() validated",
                       progress=False, seed=seed)
    return result.trainer, result.choice


def _job(pair: str, seed: int, shots: list[int], epochs: int) -> dict[str, Any]:
    """One pair and seed: pretrain once, then every k and method. Returns test accuracies and choices."""
    torch.set_num_threads(1)
    weights = _pretrain(pair, seed)
    _, _, target, _, target_classes, architecture = PAIRS[pair]
    train, test, fill = _data(target, target_classes)
    everything = TensorDataset(*(torch.cat([a, b]) for a, b in zip(train.tensors, test.tensors)))
    classes = int(everything.tensors[1].max()) + 1
    augment = build_augmentation("digits", fill=fill, batched=True)
    out: dict[str, Any] = {"accuracy": {}, "choice": {}}
    for k in shots:
        labelled, rest = per_class_split(everything, k, seed=seed)
        test_loader = InMemoryLoader(rest, batch_size=500)
        for method in METHODS:
            torch.manual_seed(seed)
            model = _model(architecture, classes)
            if "scratch" not in method and "no pretraining" not in method:
                model.load_state_dict({n: w for n, w in weights.items() if not n.startswith("head.")}, strict=False)
            loader = InMemoryLoader(labelled, batch_size=32, shuffle=True, seed=seed, transform=augment)
            trainer, choice = _train(method, model, loader, epochs, seed)
            out["accuracy"][f"{k}|{method}"] = 100 * trainer.evaluate(test_loader)["accuracy"]
            if choice is not None and method == "fine_tune() validated":
                out["choice"][str(k)] = choice
    return {"pair": pair, "seed": seed, **out}


def _summary(results: list[dict[str, Any]], pairs: list[str], shots: list[int]) -> list[str]:
    lines = []
    for pair in pairs:
        runs = [r for r in results if r["pair"] == pair]
        lines += [f"\n**{PAIRS[pair][0]}** ({len(runs)} seeds; test accuracy in %, mean ± std; wins: seeds where the "
                  "method beats its control)", "", "| method | " + " | ".join(f"k = {k}" for k in shots) + " |",
                  "|---|" + "---:|" * len(shots)]
        for method in METHODS:
            cells = []
            for k in shots:
                values = [r["accuracy"][f"{k}|{method}"] for r in runs]
                cell = f"{statistics.mean(values):.1f} ± {statistics.stdev(values) if len(values) > 1 else 0:.1f}"
                if method in CONTROL:
                    control = [r["accuracy"][f"{k}|{CONTROL[method]}"] for r in runs]
                    cell += f" ({sum(v > c for v, c in zip(values, control))}/{len(values)})"
                cells.append(cell)
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        choices = [r["choice"].get(str(k)) for r in runs for k in shots]
        lines.append("\nfine_tune() validated chose: " + ", ".join(f"{c} {choices.count(c)}x" for c in sorted(set(choices))))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    parser.add_argument("--shots", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/out/transfer_suite.json"))
    args = parser.parse_args()
    start = time.perf_counter()
    jobs = [(pair, seed, args.shots, args.epochs) for pair in args.pairs for seed in range(args.seeds)]
    with multiprocessing.get_context("spawn").Pool(args.processes) as pool:
        results = pool.starmap(_job, jobs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"{len(jobs)} pair-seed jobs, {args.epochs} epochs per method, {args.processes} processes of 1 thread; "
          f"{time.perf_counter() - start:.0f} s in all; raw results in {args.out}")
    print("\n".join(_summary(results, args.pairs, args.shots)))


if __name__ == "__main__":
    main()
