"""Timing helpers shared by the benchmarks: synchronised wall-clock timers, medians and a machine line."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so that timings measure it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes, GPU work included."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def median(values: list[float]) -> float:
    """The median of ``values``."""
    return statistics.median(values)


def machine(device: torch.device) -> str:
    """One line naming the hardware and software the figures come from."""
    if device.type == "cuda":
        hardware = torch.cuda.get_device_name(device)
    else:
        hardware = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    return f"{hardware}; torch {torch.__version__}, Python {platform.python_version()}"


def sd(values: list[float]) -> float:
    """The sample standard deviation (0 for one value)."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def seeded_runs(parser: argparse.ArgumentParser, run_seed: Callable[[int, argparse.Namespace], dict],
                summary: Callable[[list[dict]], list[str]], default_out: Path) -> None:
    """The main of a benchmark that runs once per seed: ``--seeds``, ``--out`` (JSON written after every seed),
    ``--summarise`` (the table again from ``--out``); one torch thread; the table printed at the end."""
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=default_out)
    parser.add_argument("--summarise", action="store_true", help="print the table of the results in --out and stop")
    args = parser.parse_args()
    if args.summarise:
        print("\n".join(summary(json.loads(args.out.read_text()))))
        return
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    started, results = time.perf_counter(), []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for seed in range(args.seeds):
        results.append(run_seed(seed, args))
        args.out.write_text(json.dumps(results, indent=1))
        print(f"seed {seed}: " + ", ".join(f"{k} {v['accuracy']:.1f}" for k, v in results[-1].items() if k != "seed")
              + f"; {time.perf_counter() - started:.0f} s", flush=True)
    options = ", ".join(f"{k} {v}" for k, v in vars(args).items() if k not in ("out", "summarise"))
    print(f"{options}; {time.perf_counter() - started:.0f} s; {machine(torch.device('cpu'))}")
    print("\n".join(summary(results)))
