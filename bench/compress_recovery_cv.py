"""Which recovery recipe to compare: 4-fold cross-validation on the 899 UCI training digits, never the test digits.

Each fold trains its own unpruned ``small_cnn(width=16)`` (as ``compress_digits.py`` does) on three quarters of
the training digits, prunes it to half its parameters, recovers it with each recipe on the same three
quarters, and counts errors on the held-out quarter. Summed over the folds, every training digit is
held out once (899 validation predictions per recipe). ``compress_digits.py`` then runs the best
fine-tuning and the best distillation recipe found here on the test digits.

    python bench/compress_recovery_cv.py          # about 15 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import dataclass

import torch
from compress_digits import RECOVERY_OPTIMIZER, accuracy, train_teacher
from torch.utils.data import TensorDataset

from warmstart.compress import prune, recover
from warmstart.data import InMemoryLoader, Splits, build_augmentation, digits, mnist5k


@dataclass(frozen=True)
class Recipe:
    method: str  # "finetune", "distill" (labels and teacher), "unlabelled" (teacher only, alpha=1)
    epochs: int
    temperature: float = 4.0
    alpha: float = 0.9

    def __str__(self) -> str:
        if self.method == "finetune":
            return f"fine-tuning, {self.epochs} epochs"
        labels = "no labels" if self.method == "unlabelled" else f"alpha={self.alpha}"
        return f"distillation T={self.temperature:g}, {labels}, {self.epochs} epochs"


RECIPES = [Recipe("finetune", 15), Recipe("finetune", 30), Recipe("distill", 15), Recipe("distill", 30),
           Recipe("distill", 30, alpha=0.5), Recipe("distill", 30, temperature=2.0, alpha=0.5),
           Recipe("distill", 30, temperature=1.0, alpha=0.5), Recipe("unlabelled", 30, alpha=1.0)]


def run_recipe(recipe: Recipe, pruned, teacher, x, y, augment, seed: int):
    model = copy.deepcopy(pruned)
    labels = None if recipe.method == "unlabelled" else y
    train = InMemoryLoader(x, labels, batch_size=64, shuffle=True, transform=augment, seed=seed)
    recover(model, train, teacher=teacher, method="finetune" if recipe.method == "finetune" else "distill",
            epochs=recipe.epochs, seed=seed, progress=False, optimizer=RECOVERY_OPTIMIZER,
            temperature=recipe.temperature, alpha=recipe.alpha)
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=4)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    source, target = mnist5k(), digits(size=28)
    augment = build_augmentation("digits", batched=True, fill=target.background)
    x, y = target.train.tensors
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(7))
    errors = {recipe: 0 for recipe in RECIPES}
    per_fold: dict[Recipe, list[float]] = {recipe: [] for recipe in RECIPES}
    teachers = []
    for fold in range(args.folds):
        held = order[fold::args.folds]
        kept = torch.ones(len(y), dtype=torch.bool)
        kept[held] = False
        fold_data = Splits("digits", TensorDataset(x[kept], y[kept]), TensorDataset(x[held], y[held]), 10, True)
        val = InMemoryLoader(fold_data.test, batch_size=500)
        teacher = train_teacher(source, fold_data, augment, epochs=30)
        teachers.append(accuracy(teacher, val))
        pruned, _ = prune(teacher, x[:1], ratio=0.5)
        for recipe in RECIPES:
            model = run_recipe(recipe, pruned, teacher, x[kept], y[kept], augment, seed=fold)
            per_fold[recipe].append(accuracy(model, val))
            errors[recipe] += round((100 - per_fold[recipe][-1]) * len(held) / 100)
            print(f"fold {fold}: {recipe}: {per_fold[recipe][-1]:.1f}%", flush=True)
    print(f"\nUnpruned model per fold: {' / '.join(f'{a:.1f}' for a in teachers)}%\n")
    print("| recovery recipe | validation errors (of 899) | validation accuracy (%) | per fold |")
    print("|---|---:|---:|---|")
    for recipe in sorted(RECIPES, key=errors.get):
        print(f"| {recipe} | {errors[recipe]} | {100 * (1 - errors[recipe] / len(y)):.1f} | "
              f"{' / '.join(f'{a:.1f}' for a in per_fold[recipe])} |")
    print(f"\nTotal {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
