"""Instructions per step of warmstart and of a plain loop, counted by valgrind: a measure no other process disturbs.

Wall time on a shared machine moves by more than warmstart's overhead on a small step; the count of instructions a
step executes does not. This runs the loops of ``bench/step_quantiles.py`` under ``valgrind --tool=cachegrind`` for
``--short`` and for ``--long`` steps: ``--work trainer``, the MLP step (784-256-10, batch 64, SGD with momentum) of a
plain loop and of ``ws.Trainer``; ``--work online``, the online distillation step (small CNNs, mnist5k, batch 64) of
a plain loop, of ``DistillTrainer`` and of torchdistill (when installed). The difference between the two lengths,
divided by the extra steps, is the count per step with the start-up (imports, building the batches, fit's set-up)
taken out. Instructions are not time (the interpreter's run fewer per cycle than a matrix kernel's), but a change
that removes work shows here at once. A convolution step's count moves from run to run (how much ``memcpy`` does
depends on where memory landed: millions of instructions a run, more than 1% of a step when the runs differ by 5
steps), so the online loops run 10 and 40 steps (a convolution step takes about half a minute under valgrind: over
an hour on 2 cores for the three loops).

    python bench/step_instructions.py                 # the MLP step: about 10 minutes on 2 cores (needs valgrind)
    python bench/step_instructions.py --short 20 --long 60
    python bench/step_instructions.py --work online   # 10 and 40 steps of each loop
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

LENGTHS = {"trainer": (50, 150), "online": (10, 40)}  # steps of the short and the long run
TITLES = {"trainer": "MLP 784-256-10, batch 64", "online": "online distillation, small CNNs, mnist5k, batch 64"}


def worker(work: str, loop: str, steps: int) -> None:
    """Build the batches of ``work`` (the same in every run, so that building them cancels out) and run ``steps``
    steps of ``loop`` on them, from the first batch on."""
    import logging
    import warnings

    import torch
    from step_quantiles import WORK, stamp

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)  # torchdistill logs its set-up
    make_loops, make_batches, _ = WORK[work]
    batches = make_batches()
    make_loops()[loop](stamp(batches, steps))


def instructions(work: str, loop: str, steps: int) -> int:
    """The instructions valgrind counts for a whole worker process."""
    with tempfile.TemporaryDirectory() as folder:
        out = subprocess.run(
            ["valgrind", "--tool=cachegrind", "--cache-sim=no", f"--cachegrind-out-file={folder}/cg.out",
             sys.executable, __file__, "--worker", work, loop, str(steps)],
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
    parser.add_argument("--work", choices=list(LENGTHS), default="trainer")
    parser.add_argument("--short", type=int, help="steps of the shorter run (default 50; 10 for online)")
    parser.add_argument("--long", type=int, help="steps of the longer run (default 150; 40 for online)")
    parser.add_argument("--worker", nargs=3, metavar=("WORK", "LOOP", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], int(args.worker[2]))
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt install valgrind)")
    short, long = args.short or LENGTHS[args.work][0], args.long or LENGTHS[args.work][1]
    from step_quantiles import WORK

    loops = list(WORK[args.work][0]())  # those that are installed
    runs = [(loop, steps) for steps in (short, long) for loop in loops]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        counts = dict(zip(runs, pool.map(lambda run: instructions(args.work, *run), runs)))
    per_step = {loop: (counts[loop, long] - counts[loop, short]) / (long - short) for loop in loops}
    print(f"instructions per step, {TITLES[args.work]} ({short} and {long} steps under cachegrind)\n")
    print("| loop | instructions / step | difference from the plain loop |\n|---|---:|---:|")
    for loop, count in per_step.items():
        added = count - per_step["plain"]
        print(f"| {loop} | {count:,.0f} | " + ("-" if loop == "plain" else f"{added:+,.0f} ({added / per_step['plain']:+.2%})")
              + " |")

if __name__ == "__main__":
    main()
