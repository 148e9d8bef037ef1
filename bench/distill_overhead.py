"""Distillation epoch cost against a plain student epoch: offline (cached logits, target <= 1.15x) and online.

Teacher: the small CNN at width 32 (94k parameters); student: width 8 (6k). 4,096 in-memory
1x28x28 images, batch 64. The offline run builds its cache in its first epoch, which is left
out of the per-epoch median (and reported on its own line). "offline, unchecked" skips the
per-batch comparison with the cache's sample fingerprints, so the difference to "offline" is
what the staleness check costs.

    python bench/distill_overhead.py
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from _timing import machine, median

import warmstart as ws
from warmstart.data import InMemoryLoader
from warmstart.distill import DistillTrainer
from warmstart.models import small_cnn


class _Unchecked(DistillTrainer):
    """The offline distiller without the per-batch fingerprint check (to measure what the check costs)."""

    def _check_cached_inputs(self, inputs: torch.Tensor, stored: torch.Tensor) -> None:
        pass


def epoch_seconds(kind: str, teacher: torch.nn.Module, loader: InMemoryLoader, epochs: int, device: str) -> tuple[float, float]:
    """Median seconds of epochs 2.. and the seconds of the whole first fit call."""
    torch.manual_seed(0)
    student = small_cnn(width=8)
    options = {"max_epochs": epochs, "device": device, "progress": False}
    if kind == "plain":
        trainer = ws.Trainer(student, {"name": "adam", "lr": 1e-3}, **options)
    else:
        cache = tempfile.mkdtemp() + "/logits.npy"
        cls = _Unchecked if kind == "offline, unchecked" else DistillTrainer
        trainer = cls(student, teacher, {"name": "adam", "lr": 1e-3}, cache_teacher=kind.startswith("offline"),
                      cache_path=cache, **options)
    start = time.perf_counter()
    trainer.fit(loader)
    first = time.perf_counter() - start - sum(h["seconds"] for h in trainer.history[1:])
    return median([h["seconds"] for h in trainer.history[1:]]), first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    loader = InMemoryLoader(torch.randn(args.samples, 1, 28, 28, generator=g),
                            torch.randint(0, 10, (args.samples,), generator=g), batch_size=64, shuffle=True,
                            device=args.device)
    teacher = small_cnn(width=32)
    print(f"machine: {machine(torch.device(args.device))}")
    print(f"teacher small_cnn(32) 94k params, student small_cnn(8) 6k params, {args.samples} images, batch 64, "
          f"median of {args.repeats} runs of {args.epochs} epochs")
    kinds = ["plain", "offline", "offline, unchecked", "online"]
    runs: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
    for repeat in range(args.repeats):
        for kind in kinds if repeat % 2 == 0 else kinds[::-1]:
            runs[kind].append(epoch_seconds(kind, teacher, loader, args.epochs, args.device))
    plain = [r[0] for r in runs["plain"]]
    for kind in kinds:
        epochs = [r[0] for r in runs[kind]]
        ratio = median([a / b for a, b in zip(epochs, plain)])
        print(f"  {kind:18s} {median(epochs) * 1e3:8.1f} ms/epoch  ratio {ratio:5.2f}")
    print(f"  the offline cache costs one teacher pass: first epoch {median([r[1] for r in runs['offline']]):.2f} s "
          f"against {median([r[1] for r in runs['plain']]):.2f} s for plain")


if __name__ == "__main__":
    main()
