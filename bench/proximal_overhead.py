"""Cost of a ProximalTrainer step against a plain Trainer step on the same model (target: <= 1.10x).

Models: the small CNN of warmstart.models and torchvision's ResNet-18, on 32x32 inputs, SGD with
momentum. Each repeat times the plain Trainer, the "penalty" mode and the "prox" mode over the
same batches, interleaved; figures are medians over repeats.

    python bench/proximal_overhead.py                  # CPU
    python bench/proximal_overhead.py --device cuda    # GPU
"""

from __future__ import annotations

import argparse
import copy

import torch
from _timing import machine, median, timed
from torchvision.models import resnet18

import warmstart as ws
from warmstart.models import small_cnn
from warmstart.pretrain import ProximalTrainer


def run(kind: str, base: torch.nn.Module, batches: list, device: torch.device, precision: str) -> float:
    model = copy.deepcopy(base)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    options = {"max_epochs": 1, "device": str(device), "progress": False, "log_every": 10_000, "precision": precision}
    if kind == "plain":
        trainer = ws.Trainer(model, optimizer, **options)
    else:
        trainer = ProximalTrainer(model, optimizer, lam=100.0, mode=kind, **options)
    trainer.fit(batches[:2])  # set up the anchor and warm up
    trainer.config.max_epochs += 1  # then time one more epoch over all the batches
    return timed(lambda: trainer.fit(batches), device) / len(batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=0, help="steps per timing (default: 40 CPU / 200 GPU)")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    device = torch.device(args.device)
    steps = args.steps or (200 if device.type == "cuda" else 40)
    print(f"machine: {machine(device)}")
    print(f"batch {args.batch_size} of 3x32x32, {steps} steps, SGD momentum, lam=100, precision {args.precision}, "
          f"median of {args.repeats} repeats")
    g = torch.Generator().manual_seed(0)
    models = {"small_cnn": small_cnn(num_classes=10, in_channels=3, width=32),
              "resnet18": resnet18(weights=None, num_classes=10)}
    for name, base in models.items():
        base = base.to(device)
        batches = [(torch.randn(args.batch_size, 3, 32, 32, generator=g).to(device),
                    torch.randint(0, 10, (args.batch_size,), generator=g).to(device)) for _ in range(steps)]
        times: dict[str, list[float]] = {"plain": [], "penalty": [], "prox": []}
        for repeat in range(args.repeats):
            order = list(times) if repeat % 2 else list(times)[::-1]
            for kind in order:
                times[kind].append(run(kind, base, batches, device, args.precision))
        plain = times["plain"]
        params = sum(p.numel() for p in base.parameters())
        print(f"{name} ({params / 1e6:.2f}M parameters)")
        for kind, t in times.items():
            ratio = median([a / b for a, b in zip(t, plain)])
            print(f"  {kind:8s} {median(t) * 1e3:8.2f} ms/step  ratio {ratio:5.3f}")


if __name__ == "__main__":
    main()
