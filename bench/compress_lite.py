"""Compression that holds on a real network: EfficientNet-Lite0 pruned by 30%, recovered by distillation, against
the same distillation without pruning.

For each seed, EfficientNet-Lite0 (ImageNet weights, 56 px) is fine-tuned with ``fine_tune()``'s defaults on ``k``
labelled animal shapes per class (the vision job's task); it is the teacher. Then:

- ``unpruned, distilled (control)``: a copy of the fine-tuned network distilled from it exactly as the pruned ones
  are: ``recover(method="distill")`` on the labelled images and ``--unlabelled`` training images the teacher
  labels, ``--epochs`` epochs. What the recovery itself adds or costs, without pruning.
- ``pruned (<importance>), before`` / ``recovered``: ``prune(ratio=0.3, importance=...)`` for each importance
  (``magnitude``: the group L2 norm of each channel's weights; ``taylor``: ``|weight * gradient|`` on a labelled
  batch; ``lamp``), measured before and after the same recovery.

Test accuracy on 1,000 test images (every n-th), mean ± sd over the seeds; the gap of each recovered network to its
control (paired, with the seeds at or within 2 points of it); parameters and the latency of a batch of 32 (eager, one
thread, median of 20 calls).

    python bench/compress_lite.py                     # 3 seeds, about 15-20 minutes on 2 cores
    python bench/compress_lite.py --seeds 1 --importance magnitude --epochs 1   # a quick look
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from _timing import sd, seeded_runs

from warmstart.compress import count_parameters, measure_latency, prune, recover
from warmstart.data import InMemoryLoader, animal_shapes, few_shot_split
from warmstart.finetune import fine_tune
from warmstart.models import efficientnet_lite0, efficientnet_lite_input

SIZE, BATCH, TEST, RATIO = 56, 25, 1000, 0.3
OUT = Path("bench/out/compress_lite.json")


def run_seed(seed: int, shots: int, unlabelled: int, epochs: int, importances: list[str]) -> dict[str, Any]:
    """Fine-tune, then the control and every pruned network's recovery, for one seed: accuracies (%), sizes, times."""
    torch.manual_seed(seed)
    splits = animal_shapes()
    labelled = few_shot_split(splits.train, shots, seed=seed)
    pool = splits.train.tensors[0][torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(seed))
                                   [:unlabelled]]
    transform = efficientnet_lite_input(0, size=SIZE)
    x, y = splits.test.tensors
    every = max(1, len(x) // TEST)
    test = InMemoryLoader(x[::every], y[::every], batch_size=250, transform=transform)

    def train_loader() -> InMemoryLoader:
        return InMemoryLoader(*labelled.tensors, batch_size=BATCH, shuffle=True, seed=seed, transform=transform)

    def accuracy(model: torch.nn.Module) -> float:
        from warmstart import evaluate

        return 100 * evaluate(model, test)["accuracy"]

    def distil(student: torch.nn.Module, teacher: torch.nn.Module) -> float:
        started = time.perf_counter()
        recover(student, train_loader(), teacher=teacher, method="distill", unlabelled=pool, epochs=epochs,
                seed=seed, progress=False)
        return time.perf_counter() - started

    example = transform(labelled.tensors[0][:32])
    torch.manual_seed(seed)
    teacher = efficientnet_lite0(num_classes=splits.num_classes)
    fine_tune(teacher, train_loader(), num_classes=splits.num_classes, seed=seed, progress=False,
              ensemble=False)  # one network: the one pruned
    teacher.eval()
    out: dict[str, Any] = {"seed": seed, "fine-tuned": {"accuracy": accuracy(teacher), "params": count_parameters(teacher),
                                                        "latency_ms": 1e3 * measure_latency(teacher, example)}}
    control = copy.deepcopy(teacher)
    seconds = distil(control, teacher)
    out["unpruned, distilled (control)"] = {"accuracy": accuracy(control), "seconds": seconds}
    for importance in importances:
        options = {"gradient_batch": (example, labelled.tensors[1][:32])} if importance == "taylor" else {}
        pruned, report = prune(teacher, example[:2], ratio=RATIO, importance=importance, **options)
        before = accuracy(pruned)
        seconds = distil(pruned, teacher)
        out[f"pruned ({importance})"] = {"before": before, "accuracy": accuracy(pruned), "seconds": seconds,
                                         "params": report.params_after,
                                         "latency_ms": 1e3 * measure_latency(pruned.eval(), example)}
    return out


def summary(results: list[dict[str, Any]]) -> list[str]:
    rows = [k for k in results[0] if k != "seed"]
    control = [r["unpruned, distilled (control)"]["accuracy"] for r in results]
    lines = ["| network | test accuracy (%) | before recovery (%) | vs the control (points; seeds within 2) | "
             "parameters | latency (ms / 32) |", "|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        values = [r[row]["accuracy"] for r in results]
        cell = f"{statistics.mean(values):.1f} ± {sd(values):.1f}"
        before = ([f"{statistics.mean(r[row]['before'] for r in results):.1f}"] if "before" in results[0][row] else [""])[0]
        gap = ""
        if row.startswith("pruned"):
            gaps = [v - c for v, c in zip(values, control)]
            gap = f"{statistics.mean(gaps):+.1f} ± {sd(gaps):.1f} ({sum(g >= -2 for g in gaps)}/{len(gaps)})"
        params = results[0][row].get("params", results[0]["fine-tuned"]["params"])
        latency = [r[row]["latency_ms"] for r in results if "latency_ms" in r[row]]
        lines.append(f"| {row} | {cell} | {before} | {gap} | {params:,} | "
                     f"{statistics.median(latency):.1f} |" if latency else f"| {row} | {cell} | {before} | {gap} | "
                     f"{params:,} | |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, default=10)
    parser.add_argument("--unlabelled", type=int, default=1500, help="training images the teacher labels")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of every recovery (and of the control)")
    parser.add_argument("--importance", nargs="+", default=["magnitude", "taylor", "lamp"])
    seeded_runs(parser, lambda seed, args: run_seed(seed, args.shots, args.unlabelled, args.epochs, args.importance), summary, OUT)


if __name__ == "__main__":
    main()
