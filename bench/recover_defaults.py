"""How long should `recover()` train, and which way, when labels are few? Optimizer steps x labels x method.

The digits CNN of ``compress_digits.py`` (``small_cnn(width=16)``, MNIST then the 899 UCI training digits),
pruned to half its parameters, is recovered on ``k`` labelled digits per class (the rest of the 899
training digits as unlabelled images) with ``recover``'s default optimizer (AdamW 1e-3, weight decay
0.01, cosine) for a budget of optimizer steps, three ways: fine-tuning on the labels, distillation on
the labels (T=4, alpha=0.9), and distillation on every training image with the teacher's labels
(``unlabelled=``). Every way trains the same number of optimizer steps (epochs are set from the steps
of its own data), so "more steps per epoch" is not what a method is credited with. Test accuracy on
the 898 UCI test digits, mean ± std over seeds and, in brackets, the seeds on which a distillation beats
fine-tuning (the plain way); the pruned model before recovery for reference.

    python bench/recover_defaults.py                 # about 15 minutes on 2 quiet CPU cores
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time

import torch
from _timing import machine
from compress_digits import accuracy, train_teacher

from warmstart.compress import prune, recover
from warmstart.data import InMemoryLoader, build_augmentation, digits, mnist5k, per_class_split

BATCH = 32
WAYS = {"fine-tuning (labels)": {"method": "finetune"},
        "distillation (labels, alpha=0.9)": {"method": "distill"},
        "distillation (+ unlabelled images)": {"method": "distill", "unlabelled": True}}


def run(way: dict, pruned, teacher, labelled, unlabelled, steps: int, seed: int, test) -> float:
    """Test accuracy (%) after ``steps`` optimizer steps of one recovery way."""
    images = len(labelled) + (len(unlabelled) if way.get("unlabelled") else 0)
    epochs = max(1, round(steps / math.ceil(images / BATCH)))
    loader = InMemoryLoader(labelled, batch_size=BATCH, shuffle=True, seed=seed)
    model = copy.deepcopy(pruned)
    recover(model, loader, teacher=teacher, method=way["method"], epochs=epochs, seed=seed, progress=False,
            unlabelled=unlabelled if way.get("unlabelled") else None)
    return accuracy(model, test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, nargs="+", default=[10, 30], help="labelled digits per class")
    parser.add_argument("--steps", type=int, nargs="+", default=[50, 150, 400])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    start = time.perf_counter()
    target = digits(size=28)
    teacher = train_teacher(mnist5k(), target, build_augmentation("digits", batched=True, fill=target.background), 10)
    test = InMemoryLoader(target.test, batch_size=500)
    pruned, report = prune(teacher, target.train.tensors[0][:8], ratio=0.5)
    print(f"teacher {accuracy(teacher, test):.1f}%, pruned to {report.achieved_ratio:.0%} fewer parameters: "
          f"{accuracy(pruned, test):.1f}% before recovery")
    for k in args.shots:
        print(f"\n**{k} labels per class ({10 * k} labelled, {len(target.train) - 10 * k} unlabelled)**\n")
        print("| way | " + " | ".join(f"{s} steps" for s in args.steps) + " |")
        print("|---|" + "---:|" * len(args.steps))
        control: dict[int, list[float]] = {}  # fine-tuning's accuracy per seed, for each budget
        for name, way in WAYS.items():
            cells = []
            for steps in args.steps:
                runs = []
                for seed in range(args.seeds):
                    labelled, rest = per_class_split(target.train, k, seed=seed)
                    runs.append(run(way, pruned, teacher, labelled, rest.tensors[0], steps, seed, test))
                cell = f"{statistics.mean(runs):.1f} ± {statistics.stdev(runs) if len(runs) > 1 else 0:.1f}"
                if control.setdefault(steps, runs) is not runs:  # wins over fine-tuning, seed by seed
                    cell += f" ({sum(a > b for a, b in zip(runs, control[steps]))}/{len(runs)})"
                cells.append(cell)
                print(f"  {name}, {steps} steps, per seed: {[round(a, 1) for a in runs]}", flush=True)
            print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    print(f"\n{args.seeds} seeds, batch {BATCH}, recover()'s default optimizer; {time.perf_counter() - start:.0f} s on "
          f"{machine(torch.device('cpu'))}")


if __name__ == "__main__":
    main()
