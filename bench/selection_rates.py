"""How often warmstart.selection chooses wrongly, and how often it finds a real gain: simulated trainings.

Each draw scores the candidates on the folds of one simulated task (:class:`warmstart.selection.SimulatedTask`:
per-sample difficulty shared by the candidates, a training noise of 2 points shared by a split's candidates and 2
of each training's own) and lets :func:`warmstart.selection.choose` choose, the first candidate being the default.
"false choice": every candidate equally good, the share of draws where another than the default is chosen.
"10-point gain": one challenger 10 points better, the share of draws where it is chosen.
"rule before": the false choice of the rule warmstart used until 2026-12-07 (the best mean, taken when its mean
paired gain over the default exceeded the gain's standard error, repeats counted as independent pairs).

    python bench/selection_rates.py              # the table of the README (about 1 minute)
    python bench/selection_rates.py --draws 4000
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from warmstart.selection import CandidateScore, SimulatedTask, choice_rate, standard_error

SETTINGS = [(100, 5, 1), (300, 3, 1), (300, 5, 1), (1000, 3, 1), (1000, 5, 1), (300, 3, 2)]


def rule_before(scores: dict[str, CandidateScore], default: str) -> str:
    """The rule this one replaced: the best mean when ``mean(d) > se(d)`` over the splits."""
    best = max(scores, key=lambda n: scores[n].mean)
    if best == default:
        return default
    gains = [b - d for b, d in zip(scores[best].folds, scores[default].folds)]
    return best if sum(gains) / len(gains) > standard_error(gains) else default


def false_choice_before(task: SimulatedTask, candidates: int, draws: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    return sum(rule_before(task.scores([0.0] * candidates, rng), "c0") != "c0" for _ in range(draws)) / draws


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=2000, help="draws per cell")
    parser.add_argument("--gain", type=float, default=0.10, help="the better challenger's true gain")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    gain = f"{100 * args.gain:.0f}-point gain chosen"
    print(f"| labels | folds x repeats | false choice, 2 / 5 candidates | {gain}, 2 / 5 | rule before: false choice |")
    print("|---:|---|---:|---:|---:|")
    for labels, folds, repeats in SETTINGS:
        task = SimulatedTask(labels=labels, folds=folds, repeats=repeats)
        false = [choice_rate(task, [0.0] * n, args.draws, seed=n) for n in (2, 5)]
        found = [choice_rate(task, [0.0] * (n - 1) + [args.gain], args.draws, seed=10 + n) for n in (2, 5)]
        before = [false_choice_before(task, n, args.draws, seed=20 + n) for n in (2, 5)]
        print(f"| {labels:,} | {folds} x {repeats} | {false[0]:.1%} / {false[1]:.1%} | {found[0]:.0%} / {found[1]:.0%} "
              f"| {before[0]:.0%} / {before[1]:.0%} |", flush=True)
    print(f"({args.draws} draws a cell, {time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
