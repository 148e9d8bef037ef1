"""Transfer on tasks the recipes were not tuned on: four source -> target pairs, every method beside a fair control.

Pairs built from the bundled data: the same classes (MNIST -> UCI digits), disjoint classes (MNIST 0-4 ->
UCI digits 5-9), the reverse direction (UCI digits -> MNIST) and another architecture (a small ResNet,
MNIST -> UCI digits). For each pair and seed, the model is pretrained on the whole source training split
(about 500 steps, "digits" augmentation), then for k = 5, 10, 20 labelled target images per class (the
rest of the target set is the test set) every method trains for the same epochs with the same
augmentation, loss (cross-entropy, label smoothing 0.1) and optimizer (AdamW 3e-3, weight decay 0.01,
cosine). Every model is built afresh with the target's class count, so its head has the architecture's
default initialisation (``nn.Linear.reset_parameters``); the pretrained rows load every weight but the
head's. fine_tune() is called without ``num_classes``, so it keeps that head (it swaps a head, with
``head_init``, only when ``num_classes`` is given).

The control of every row is "from scratch": the same architecture with its default initialisation,
every layer at the head's learning rate, the same epochs, loss, optimizer and augmentation; it is
also the ``no_pretraining`` candidate of the validated fine_tune(). Until 2026-12-06 the recipe rows
were compared with the fixed recipe run on random weights ("fixed recipe, no pretraining"), whose
2-epoch linear probe on random features and layer-wise lr decay (lower layers at 0.9^depth of the
rate) handicap random weights: it was below "from scratch" in most cells, so it flattered the
recipes. It stays as a row, with its own wins against "from scratch", to show that handicap.
Each method's cell gives its accuracy, then its paired difference from the control over seeds
(mean ± sd) and the seeds where it beats the control; "!" marks a method below the control by more
than that sd. The validated fine_tune() chooses among its candidates by stratified 5-fold
cross-validation over the k labels (no extra labels), then trains the choice on all k; the fixed
recipe adds a 2-epoch linear-probe warm-up before its epochs.

    python bench/transfer_suite.py               # about an hour on 2 shared CPU cores (2 processes)
    python bench/transfer_suite.py --seeds 2 --shots 10 --pairs same   # a quick look
    python bench/transfer_suite.py --summarise   # the tables again from bench/out/transfer_suite.json
    python bench/transfer_suite.py --pairs same --seeds 3 --methods "fine_tune() validated"   # one row, its control
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
CONTROL = "from scratch (control)"
NO_PRETRAINING_RECIPE = "fixed recipe, no pretraining"
METHODS = [CONTROL, "linear probe", "full (backbone lr x0.1)", "fine_tune() fixed recipe", "fine_tune() validated",
           NO_PRETRAINING_RECIPE]


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
    if method in (CONTROL, "full (backbone lr x0.1)", "linear probe"):
        spec = {CONTROL: {"name": "full", "backbone_lr_mult": 1.0},
                "full (backbone lr x0.1)": "full", "linear probe": "linear_probe"}[method]
        FinetuneTrainer(model, OPTIMIZER, LOSS, method=spec, **options).fit(loader)
        return model, None
    result = fine_tune(model, loader, epochs=epochs, optimizer=OPTIMIZER, select=method == "fine_tune() validated",
                       progress=False, seed=seed)
    return result.model, "+".join(result.members) or result.choice  # the ensemble where fine_tune returns one


def _job(pair: str, seed: int, shots: list[int], epochs: int, methods: list[str] = METHODS) -> dict[str, Any]:
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
        for method in methods:
            torch.manual_seed(seed)
            model = _model(architecture, classes)
            if method not in (CONTROL, NO_PRETRAINING_RECIPE):  # the controls keep the default init everywhere
                model.load_state_dict({n: w for n, w in weights.items() if not n.startswith("head.")}, strict=False)
            loader = InMemoryLoader(labelled, batch_size=32, shuffle=True, seed=seed, transform=augment)
            trained, choice = _train(method, model, loader, epochs, seed)
            out["accuracy"][f"{k}|{method}"] = 100 * ws.evaluate(trained, test_loader)["accuracy"]
            if choice is not None and method == "fine_tune() validated":
                out["choice"][str(k)] = choice
    return {"pair": pair, "seed": seed, **out}


def _cell(values: list[float], control: list[float] | None) -> str:
    """``mean ± sd``; beside a control, the paired difference ``(Δ mean ± sd, wins/n)``, "!" when below beyond its sd."""
    cell = f"{statistics.mean(values):.1f} ± {_sd(values):.1f}"
    if control is None:
        return cell
    gaps = [v - c for v, c in zip(values, control)]
    mark = " !" if statistics.mean(gaps) < -_sd(gaps) else ""
    return cell + f" ({statistics.mean(gaps):+.1f} ± {_sd(gaps):.1f}, {sum(g > 0 for g in gaps)}/{len(gaps)}{mark})"


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _summary(results: list[dict[str, Any]], pairs: list[str], shots: list[int],
             methods: list[str] = METHODS) -> list[str]:
    lines = []
    for pair in pairs:
        runs = sorted((r for r in results if r["pair"] == pair), key=lambda r: r["seed"])
        if not runs:
            continue
        lines += [f"\n**{PAIRS[pair][0]}** ({len(runs)} seeds; test accuracy in %, mean ± sd; in parentheses the paired "
                  "difference from the control, mean ± sd, and the seeds where the method beats it)", "",
                  "| method | " + " | ".join(f"k = {k}" for k in shots) + " |", "|---|" + "---:|" * len(shots)]
        for method in methods:
            cells = [_cell([r["accuracy"][f"{k}|{method}"] for r in runs],
                           None if method == CONTROL else [r["accuracy"][f"{k}|{CONTROL}"] for r in runs])
                     for k in shots]
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
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS,
                        help="the methods to run (the control always runs: every row is paired with it)")
    parser.add_argument("--summarise", action="store_true", help="print the tables of the results in --out and stop")
    args = parser.parse_args()
    methods = [m for m in METHODS if m == CONTROL or m in args.methods]
    if args.summarise:
        print("\n".join(_summary(json.loads(args.out.read_text()), args.pairs, args.shots, methods)))
        return
    start = time.perf_counter()
    # seed by seed, so that a run cut short has the same seeds of every pair
    jobs = [(pair, seed, args.shots, args.epochs, methods) for seed in range(args.seeds) for pair in args.pairs]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results = []
    with multiprocessing.get_context("spawn").Pool(args.processes) as pool:
        for result in pool.imap_unordered(_star_job, jobs):  # written as they come, so a cut-off run keeps its seeds
            results.append(result)
            args.out.write_text(json.dumps(results, indent=1))
            print(f"{len(results)}/{len(jobs)} done ({result['pair']}, seed {result['seed']}), "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
    print(f"{len(jobs)} pair-seed jobs, {args.epochs} epochs per method, {args.processes} processes of 1 thread; "
          f"{time.perf_counter() - start:.0f} s in all; raw results in {args.out}")
    print("\n".join(_summary(results, args.pairs, args.shots, methods)))


def _star_job(job: tuple[str, int, list[int], int, list[str]]) -> dict[str, Any]:
    return _job(*job)


if __name__ == "__main__":
    main()
