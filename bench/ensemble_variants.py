"""What fine_tune()'s ensemble is made of, at 10 labels per class: its members, other pairs, and one network distilled
from it.

The cells of ``bench/finetune_real.py`` (EfficientNet-Lite0 at 56 px, ``k`` labels per class drawn per seed, one
thread); every network is trained by ``fine_tune()`` itself, test accuracy (%) per seed:

- ``recipe``: ``fine_tune()``'s own call, whose model is the recipe member; ``full``: the full fine-tune as its
  ``full`` candidate trains it (``select=False, freeze_epochs=0, layer_decay=None``); ``recipe2``: the recipe again
  from another seed;
- ``ens(recipe,full)``: what ``fine_tune()`` returns here; ``ens(recipe,recipe2)``: two recipes; ``ens3``: all three;
- ``distilled``: a fresh Lite0 trained by the recipe on ``ens(recipe,full)``'s probabilities of the labelled images
  (no unlabelled images: what one network can keep of the ensemble).

About 180 s a seed:

    python bench/ensemble_variants.py                     # animal shapes, seeds 0-2
    python bench/ensemble_variants.py --task mnist
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from finetune_real import cell_arguments, image_task, network  # noqa: E402

from warmstart.data import InMemoryLoader  # noqa: E402
from warmstart.finetune import fine_tune  # noqa: E402


def probabilities(models: list[torch.nn.Module], loader: InMemoryLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """The models' class probabilities averaged over ``loader``, and its targets."""
    out, targets = [], []
    with torch.no_grad():
        for x, y in loader:
            out.append(sum(m(x).softmax(1) for m in models) / len(models))
            targets.append(y)
    return torch.cat(out), torch.cat(targets)


def accuracy(models: list[torch.nn.Module], loader: InMemoryLoader) -> float:
    for m in models:
        m.eval()
    p, y = probabilities(models, loader)
    return 100 * float((p.argmax(1) == y).float().mean())


def main() -> None:
    args = cell_arguments(__doc__.splitlines()[0])
    for seed in args.seeds:
        started = time.perf_counter()
        data = image_task(args.task, args.shots, seed)
        classes, options = data["classes"], {"progress": False, "device": "cpu"}
        torch.manual_seed(seed)
        recipe = network(args.task, classes)
        fine_tune(recipe, data["train"](), num_classes=classes, seed=seed, ensemble=False, **options)
        torch.manual_seed(seed)
        full = network(args.task, classes)
        fine_tune(full, data["train"](), num_classes=classes, seed=seed + 1000, select=False, freeze_epochs=0,
                  layer_decay=None, **options)
        torch.manual_seed(seed + 1)
        recipe2 = network(args.task, classes)
        fine_tune(recipe2, data["train"](), num_classes=classes, seed=seed + 2000, select=False, **options)
        loader = data["train"]()
        recipe.eval(), full.eval()
        ordered = InMemoryLoader(loader.inputs, loader.targets, batch_size=250, transform=loader.transform)
        soft, _ = probabilities([recipe, full], ordered)
        torch.manual_seed(seed + 2)
        student = network(args.task, classes)
        fine_tune(student, InMemoryLoader(loader.inputs, soft, batch_size=loader.batch_size, shuffle=True, seed=seed,
                                          transform=loader.transform),
                  num_classes=classes, seed=seed + 3000, select=False, label_smoothing=0.0, **options)
        test = data["test"]
        scores = {"recipe": [recipe], "full": [full], "recipe2": [recipe2], "ens(recipe,full)": [recipe, full],
                  "ens(recipe,recipe2)": [recipe, recipe2], "ens3": [recipe, full, recipe2], "distilled": [student]}
        print(f"{args.task}, {args.shots} per class, seed {seed}: "
              + ", ".join(f"{name} {accuracy(models, test):.1f}" for name, models in scores.items())
              + f"; {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
