"""Fast on a busy machine: a fit, an evaluation, a CLI command and a job, each quiet and beside busy processes.

Each round runs every case once, in turn, in a fresh process: quiet, then beside ``n`` busy processes (pure-Python
loops this script starts before and ends after the case). The workloads:

- ``fit``: a user script that imports torch first, then ``warmstart``: one epoch of ``small_cnn(width=16)`` on the
  4,000 MNIST training digits through ``ws.Trainer.fit`` (batch 64), torch's OpenMP settings and the Trainer's
  default ``threads="auto"``; ``fit, threads=None``: the same with torch's own thread count;
- ``evaluate``: ``ws.evaluate`` of that network on them, 5 times (and with ``threads=None``);
- ``cli``: ``warmstart pretrain configs/pretrain.yaml trainer.max_epochs=1``, the whole command (the CLI sets
  ``GOMP_SPINCOUNT`` before torch is loaded); beside it the same with torch's own spinning, for comparison;
- ``job``: ``warmstart run configs/digits_transfer.yaml``, the README's main job (pretraining, fine-tuning,
  distillation; about a minute quiet on 2 cores), the whole command.

``--cases`` picks some.

The table: the median seconds over the rounds (min-max) and the ratio to the quiet median of the same case.

    python bench/busy.py --cases fit "fit, threads=None" evaluate "evaluate, threads=None" cli   # about 6 minutes
    python bench/busy.py --cases job --busy 0 2                                                  # about 10 minutes
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIT = """
import time, torch, warmstart as ws
from warmstart.data import InMemoryLoader, mnist5k
data = mnist5k()
model = ws.models.small_cnn(num_classes=10, width=16)
loader = InMemoryLoader(data.train, batch_size=64, shuffle=True)
trainer = ws.Trainer(model, {"name": "adamw", "lr": 3e-3}, max_epochs=1, progress=False, log_every=50,
                     threads={threads})
start = time.perf_counter()
if "{work}" == "fit":
    trainer.fit(loader)
else:
    for _ in range(5):
        ws.evaluate(model, InMemoryLoader(data.train, batch_size=500), threads={threads})
print(time.perf_counter() - start)
"""
CASES = {
    "fit": ("fit", "auto", {}),
    "fit, threads=None": ("fit", None, {}),
    "evaluate": ("evaluate", "auto", {}),
    "evaluate, threads=None": ("evaluate", None, {}),
    "cli": ("cli", None, {}),
    "cli with torch's spinning (GOMP_SPINCOUNT=infinite)": ("cli", None, {"GOMP_SPINCOUNT": "infinite"}),
    "job": ("job", None, {}),
}


def run_case(work: str, threads: str | None, env_changes: dict[str, str], folder: Path) -> float:
    """Seconds of one case in a fresh process (the work alone for fit/evaluate, the whole command for cli/job)."""
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")} | env_changes
    commands = {"cli": ["pretrain", str(ROOT / "configs" / "pretrain.yaml"), "trainer.max_epochs=1",
                        f"trainer.out_dir={folder / 'cli'}", "--overwrite", "--quiet"],
                "job": ["run", str(ROOT / "configs" / "digits_transfer.yaml"), f"out_dir={folder / 'job'}",
                        "--overwrite", "--quiet"]}
    if work in commands:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "warmstart", *commands[work]],
                       check=True, env=env, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - start
    script = FIT.replace("{work}", work).replace("{threads}", repr(threads))
    out = subprocess.run([sys.executable, "-c", script], check=True, env=env, cwd=folder,
                         capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def busy(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--busy", type=int, nargs="+", default=[0, 1, 2], help="busy processes beside each case")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    args = parser.parse_args()
    times: dict[tuple[str, int], list[float]] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for case in args.cases:
                for n in args.busy:
                    others = busy(n)
                    try:
                        time.sleep(0.5 if n else 0)  # the busy processes are running before the case starts
                        seconds = run_case(*CASES[case], Path(tmp))
                    finally:
                        for p in others:
                            p.kill()
                            p.wait()
                    times.setdefault((case, n), []).append(seconds)
                    print(f"round {round_ + 1}, {case}, {n} busy: {seconds:.2f} s", file=sys.stderr, flush=True)
    print(f"| case | {' | '.join(f'{n} busy' for n in args.busy)} |")
    print("|---|" + "---:|" * len(args.busy))
    for case in args.cases:
        quiet = statistics.median(times[(case, args.busy[0])])
        cells = []
        for n in args.busy:
            values = times[(case, n)]
            median = statistics.median(values)
            cells.append(f"{median:.2f} s ({min(values):.2f}-{max(values):.2f}), {median / quiet:.1f}x")
        print(f"| {case} | " + " | ".join(cells) + " |")
    print(f"({args.rounds} rounds, {time.perf_counter() - started:.0f} s; {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
