"""Instructions per step of warmstart and of a plain loop, counted by valgrind: a measure no other process disturbs.

Wall time on a shared machine moves by more than warmstart's overhead on a small step; the count of instructions a
step executes does not. This runs the MLP step of ``bench/step_quantiles.py`` (784-256-10, batch 64, SGD with
momentum) under ``valgrind --tool=cachegrind`` for ``--short`` and for ``--long`` steps, for the plain loop and for
``ws.Trainer``; the difference between the two lengths, divided by the extra steps, is the count per step with the
start-up (imports, building the batches, fit's set-up) taken out. Instructions are not time (the interpreter's run
fewer per cycle than a matrix kernel's), but a change that removes work shows here at once.

    python bench/step_instructions.py                 # about 10 minutes on 2 cores (needs valgrind)
    python bench/step_instructions.py --short 20 --long 60
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor


def worker(loop: str, steps: int, total: int) -> None:
    """Build ``total`` batches (as many in every run, so that building them cancels out) and run ``steps`` steps of
    ``loop`` (``plain`` or ``warmstart``) on the first of them."""
    import torch
    from step_quantiles import trainer_work

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(total, 64, 784, generator=g), torch.randint(0, 10, (total, 64), generator=g)
    trainer_work()[loop]([(x[i], y[i]) for i in range(steps)])


def instructions(loop: str, steps: int, total: int) -> int:
    """The instructions valgrind counts for a whole worker process."""
    with tempfile.TemporaryDirectory() as folder:
        out = subprocess.run(
            ["valgrind", "--tool=cachegrind", "--cache-sim=no", f"--cachegrind-out-file={folder}/cg.out",
             sys.executable, __file__, "--worker", loop, str(steps), str(total)],
            capture_output=True, text=True, check=True,
            # no BLAS or OpenMP worker threads: a thread that spins while it waits adds instructions that depend on
            # how valgrind happened to schedule it
            env={**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                 "MKL_NUM_THREADS": "1"})
    found = re.search(r"I\s+refs:\s+([\d,]+)", out.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count in valgrind's output:\n{out.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", type=int, default=50, help="steps of the shorter run")
    parser.add_argument("--long", type=int, default=150, help="steps of the longer run")
    parser.add_argument("--worker", nargs=3, metavar=("LOOP", "STEPS", "TOTAL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], int(args.worker[1]), int(args.worker[2]))
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt install valgrind)")
    runs = [(loop, steps) for steps in (args.short, args.long) for loop in ("plain", "warmstart")]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        counts = dict(zip(runs, pool.map(lambda run: instructions(*run, args.long), runs)))
    extra = args.long - args.short
    per_step = {loop: (counts[loop, args.long] - counts[loop, args.short]) / extra for loop in ("plain", "warmstart")}
    print(f"instructions per step, MLP 784-256-10, batch 64 ({args.short} and {args.long} steps under cachegrind)\n")
    print("| loop | instructions / step |\n|---|---:|")
    for loop, count in per_step.items():
        print(f"| {loop} | {count:,.0f} |")
    added = per_step["warmstart"] - per_step["plain"]
    print(f"| warmstart - plain | {added:+,.0f} ({added / per_step['plain']:+.2%}) |")


if __name__ == "__main__":
    main()
