"""The cost of writing logs: a run with ``out_dir`` (metrics.csv, TensorBoard) against the same run without.

10,000 steps of a small MLP with ``log_every=1`` (the worst case: a row per step), interleaved in one
process; target: with ``out_dir`` within 1.2x of without. The CSV file is appended a row at a time (a
full rewrite per log made this quadratic: 726 s against 13.3 s before the fix).

    python bench/csv_logging.py
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from _timing import machine, median
from torch import nn

import warmstart as ws
from warmstart.callbacks import TensorBoardLogger
from warmstart.data import InMemoryLoader


def run_seconds(steps: int, out_dir: str | None, tensorboard: bool) -> float:
    """Seconds of one fit of ``steps`` steps with a log row per step."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))
    data = InMemoryLoader(torch.randn(steps * 16, 32), torch.randint(0, 10, (steps * 16,)), batch_size=16, seed=0)
    trainer = ws.Trainer(model, {"name": "sgd", "lr": 0.01}, max_epochs=1, log_every=1, progress=False, seed=0,
                         out_dir=out_dir, checkpoint=False)
    if not tensorboard:
        trainer.callbacks = [cb for cb in trainer.callbacks if not isinstance(cb, TensorBoardLogger)]
    start = time.perf_counter()
    trainer.fit(data)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {machine(torch.device('cpu'))}")
    print(f"{args.steps} steps, log_every=1, MLP 32-64-10, batch 16, median of {args.repeats} interleaved repeats")
    kinds = {"no out_dir": (False, False), "out_dir, CSV only": (True, False), "out_dir, CSV + TensorBoard": (True, True)}
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for repeat in range(args.repeats):
        for kind, (with_dir, tensorboard) in (kinds.items() if repeat % 2 == 0 else reversed(kinds.items())):
            with tempfile.TemporaryDirectory() as folder:
                times[kind].append(run_seconds(args.steps, folder if with_dir else None, tensorboard))
    base = times["no out_dir"]
    for kind, seconds in times.items():
        ratio = median([s / b for s, b in zip(seconds, base)])
        print(f"  {kind:28s} {median(seconds):7.2f} s  ratio {ratio:5.2f}")


if __name__ == "__main__":
    main()
