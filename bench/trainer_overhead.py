"""Per-step cost of ws.Trainer against a plain PyTorch loop (and Lightning, if installed), in one process.

A small MLP on in-memory batches, sized so a plain step takes about 1 ms on 2 CPU cores. Each repeat
runs the plain loop, then the Trainer (then Lightning) over the same batches, interleaved so that
machine noise hits all alike; the figures are medians over the repeats.

    python bench/trainer_overhead.py                 # CPU, the figures in bench/RESULTS.md
    python bench/trainer_overhead.py --device cuda   # on a GPU
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from _timing import machine, median, synchronize, timed
from torch import nn

import warmstart as ws


def make_model(width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(128, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))


def make_batches(steps: int, batch_size: int, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(steps, batch_size, 128, generator=g)
    y = torch.randint(0, 10, (steps, batch_size), generator=g)
    return [(x[i].to(device), y[i].to(device)) for i in range(steps)]


def plain_loop(model: nn.Module, optimizer: torch.optim.Optimizer, batches: list) -> None:
    model.train()
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def warmstart_loop(model: nn.Module, optimizer: torch.optim.Optimizer, batches: list, device: torch.device) -> None:
    trainer = ws.Trainer(model, optimizer, max_epochs=1, device=str(device), progress=False, log_every=50)
    trainer.fit(batches)


def lightning_loop(model: nn.Module, batches: list, device: torch.device) -> None:
    import lightning as L

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = model

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.net.parameters(), lr=0.01, momentum=0.9)

    trainer = L.Trainer(max_epochs=1, accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, log_every_n_steps=50)
    trainer.fit(Module(), train_dataloaders=_Batches(batches))  # a bare list would be read as many loaders


class _Batches:
    """An iterable over prepared batches, with a length."""

    def __init__(self, batches: list):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def per_step(args: argparse.Namespace, device: torch.device) -> dict[str, dict[str, float]]:
    """Seconds per step of each loop, and their ratio and difference to the plain loop in the same repeat."""
    batches = make_batches(args.steps, args.batch_size, device)
    base = make_model(args.width).to(device)

    def run(name: str) -> float:
        model = copy.deepcopy(base)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        if name == "plain":
            return timed(lambda: plain_loop(model, opt, batches), device) / args.steps
        if name == "warmstart":
            return timed(lambda: warmstart_loop(model, opt, batches, device), device) / args.steps
        return timed(lambda: lightning_loop(model, batches, device), device) / args.steps

    names = ["plain", "warmstart"]
    if importlib.util.find_spec("lightning") is not None and not args.no_lightning:
        names.append("lightning")
    times: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(args.repeats + 1):  # round 0 warms up caches and allocators and is dropped
        order = names if repeat % 2 else names[::-1]  # alternate the order so drift hits all alike
        seconds = {name: run(name) for name in order}
        if repeat:
            for name in names:
                times[name].append(seconds[name])
    plain = times["plain"]
    return {name: {"step": median(t), "ratio": median([a / b for a, b in zip(t, plain)]),
                   "overhead": median([a - b for a, b in zip(t, plain)])} for name, t in times.items()}


def whole_process(args: argparse.Namespace) -> dict[str, float]:
    """Seconds for a whole process that imports, builds and trains (this script with --child)."""
    results: dict[str, list[float]] = {"plain": [], "warmstart": []}
    for _ in range(args.process_repeats):
        for mode in results:
            start = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--child", mode, "--steps", str(args.steps),
                            "--width", str(args.width), "--batch-size", str(args.batch_size)], check=True)
            results[mode].append(time.perf_counter() - start)
    return {mode: median(times) for mode, times in results.items()}


def child(args: argparse.Namespace) -> None:
    device = torch.device("cpu")
    batches = make_batches(args.steps, args.batch_size, device)
    model = make_model(args.width)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    if args.child == "plain":
        plain_loop(model, opt, batches)
    else:
        warmstart_loop(model, opt, batches, device)
    synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--process-repeats", type=int, default=3)
    parser.add_argument("--no-lightning", action="store_true")
    parser.add_argument("--child", choices=["plain", "warmstart"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    device = torch.device(args.device)
    print(f"machine: {machine(device)}")
    print(f"MLP 128-{args.width}-{args.width}-10, batch {args.batch_size}, {args.steps} steps, "
          f"median of {args.repeats} interleaved repeats")
    print("  (ratio and overhead: medians of the per-repeat comparison with the plain loop)")
    for name, figures in per_step(args, device).items():
        print(f"  {name:10s} {figures['step'] * 1e6:8.1f} us/step  ratio {figures['ratio']:5.3f}  "
              f"overhead {figures['overhead'] * 1e6:+6.1f} us/step")
    if device.type == "cpu" and args.process_repeats:
        runs = whole_process(args)
        print(f"whole process (import, build, {args.steps} steps), median of {args.process_repeats}:")
        for name, seconds in runs.items():
            print(f"  {name:10s} {seconds:6.2f} s  ratio {seconds / runs['plain']:5.3f}")


if __name__ == "__main__":
    main()
