"""Linear probe: epoch time with cached backbone features against running the frozen backbone every epoch.

torchvision's ResNet-18 as the frozen backbone, 2,048 in-memory
images of 3x32x32, batch 64. The cached run pays one pass of the backbone to build the cache,
then trains only the head; the figures are medians over repeats (target: >= 10x per epoch).

    python bench/linear_probe_speed.py
"""

from __future__ import annotations

import argparse
import time

import torch
from _timing import machine, median
from torchvision.models import resnet18

from warmstart.data import InMemoryLoader
from warmstart.finetune import FinetuneTrainer, LinearProbe


def run(cache: bool, loader: InMemoryLoader, epochs: int, device: str) -> tuple[float, float]:
    """Return (seconds of the first fit call's set-up and epochs, median steady-state epoch seconds)."""
    torch.manual_seed(0)
    model = resnet18(num_classes=10)
    trainer = FinetuneTrainer(model, {"name": "adamw", "lr": 1e-3}, method=LinearProbe(cache_features=cache),
                              max_epochs=epochs, device=device, progress=False)
    start = time.perf_counter()
    trainer.fit(loader)
    total = time.perf_counter() - start
    return total, median([h["seconds"] for h in trainer.history[1:]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    loader = InMemoryLoader(torch.randn(args.samples, 3, 32, 32, generator=g),
                            torch.randint(0, 10, (args.samples,), generator=g), batch_size=64, shuffle=True,
                            device=args.device)
    print(f"machine: {machine(torch.device(args.device))}")
    print(f"ResNet-18 on 3x32x32, {args.samples} images, batch 64, {args.epochs} epochs, median of {args.repeats}")
    results = {"frozen backbone every epoch": [], "cached features": []}
    for _ in range(args.repeats):
        results["frozen backbone every epoch"].append(run(False, loader, args.epochs, args.device))
        results["cached features"].append(run(True, loader, args.epochs, args.device))
    slow_epoch = median([r[1] for r in results["frozen backbone every epoch"]])
    slow_total = median([r[0] for r in results["frozen backbone every epoch"]])
    for name, runs in results.items():
        epoch, total = median([r[1] for r in runs]), median([r[0] for r in runs])
        print(f"  {name:28s} {epoch * 1e3:9.1f} ms/epoch ({slow_epoch / epoch:6.1f}x)   whole fit {total:6.2f} s "
              f"({slow_total / total:4.1f}x)")


if __name__ == "__main__":
    main()
