"""fine_tune()'s recipe and the full fine-tune at 10 labels per class, and the two combined: their weights averaged
(a uniform soup, Wortsman et al. 2022) and their probabilities averaged (an ensemble of the two networks).

The cells of ``bench/finetune_real.py`` (EfficientNet-Lite0 at 56 px, ``k`` labels per class drawn per seed, one
thread, the full fine-tune as that script trains it for as many steps as the recipe); test accuracy (%) per seed.
A lead for the few-label regime, where ``fine_tune()``'s choice cannot run: about 80 s a seed.

    python bench/recipe_soup.py                       # animal shapes, seeds 0-2
    python bench/recipe_soup.py --task mnist --seeds 0 1
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from finetune_real import cell_arguments, image_task, network  # noqa: E402

import warmstart as ws  # noqa: E402
from warmstart.finetune import FinetuneTrainer, fine_tune  # noqa: E402


def main() -> None:
    args = cell_arguments(__doc__.splitlines()[0])
    for seed in args.seeds:
        data = image_task(args.task, args.shots, seed)
        torch.manual_seed(seed)
        recipe = network(args.task, data["classes"])
        result = fine_tune(recipe, data["train"](), num_classes=data["classes"], progress=False, seed=seed, device="cpu")
        epochs = len([h for h in result.history if h["phase"] == "full"])
        torch.manual_seed(seed)
        full = network(args.task, data["classes"])
        FinetuneTrainer(full, {"name": "adamw", "lr": 1e-3, "weight_decay": 0.01}, max_epochs=epochs,
                        scheduler={"name": "cosine", "warmup_epochs": 1}, method={"name": "full", "backbone_lr_mult": 1.0},
                        progress=False, seed=seed, device="cpu").fit(data["train"]())
        a, b = recipe.state_dict(), full.state_dict()
        soup = copy.deepcopy(recipe)
        soup.load_state_dict({k: (a[k] + b[k]) / 2 if a[k].is_floating_point() else a[k] for k in a})
        recipe.eval(), full.eval()
        right = total = 0
        with torch.no_grad():
            for x, y in data["test"]:
                right += int(((recipe(x).softmax(1) + full(x).softmax(1)).argmax(1) == y).sum())
                total += len(y)
        scores = {name: 100 * ws.evaluate(model, data["test"], threads=1)["accuracy"]
                  for name, model in (("recipe", recipe), ("full", full), ("soup", soup))}
        print(f"{args.task}, {args.shots} per class, seed {seed}: " + ", ".join(f"{k} {v:.1f}" for k, v in scores.items())
              + f", ensemble {100 * right / total:.1f}", flush=True)


if __name__ == "__main__":
    main()
