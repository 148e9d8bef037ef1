"""The README's table of the main job: ``warmstart run configs/digits_transfer.yaml`` for seeds 0-2, with torch's
default threads and with one thread, side by side.

Each run is the README's own command with ``trainer.seed=S`` and its own ``out_dir`` (``OMP_NUM_THREADS=1`` for the
one-thread runs), read back from its ``results.json``; the table gives seed 0 as the command prints it, the mean ±
sd over the seeds, and each seed under both thread counts.

    python bench/main_job_table.py                 # 6 runs, about 5-8 minutes on 2 cores
    python bench/main_job_table.py --seeds 0       # the seed the README's command runs
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "digits_transfer.yaml"


def run(seed: int, threads: int | None, out: Path) -> dict:
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    cmd = [sys.executable, "-m", "warmstart.cli", "run", str(CONFIG), f"trainer.seed={seed}", f"out_dir={out}", "--quiet"]
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    return json.loads((out / "results.json").read_text())["methods"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    started = time.perf_counter()
    results: dict[tuple[int, int | None], dict] = {}
    with tempfile.TemporaryDirectory() as folder:
        for seed in args.seeds:
            for threads in (None, 1):
                results[(seed, threads)] = run(seed, threads, Path(folder) / f"s{seed}-t{threads}")
                print(f"seed {seed}, {'default' if threads is None else threads} thread(s): "
                      f"{time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    first = results[(args.seeds[0], None)]
    print("| method | test accuracy (%), seed 0 | seeds, mean ± sd | per seed | per seed, `OMP_NUM_THREADS=1` | "
          "validation (%), seed 0 | parameters |")
    print("|---|---:|---:|---|---|---:|---:|")
    for name, row in first.items():
        if "accuracy" not in row:
            continue
        values = [100 * results[(s, None)][name]["accuracy"] for s in args.seeds]
        one = [100 * results[(s, 1)][name]["accuracy"] for s in args.seeds]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        val = row.get("val_accuracy")
        print(f"| {name} | {100 * row['accuracy']:.1f} | {statistics.mean(values):.1f} ± {spread:.1f} | "
              + " / ".join(f"{v:.1f}" for v in values) + " | " + " / ".join(f"{v:.1f}" for v in one)
              + f" | {'' if val is None else f'{100 * val:.1f}'} | {row['params']:,} |")
    print(f"({len(results)} runs, {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
