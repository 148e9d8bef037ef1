"""How often the choice is wrong, measured: simulated trainings scored on the same folds as a real choice."""

from __future__ import annotations

import dataclasses

import numpy as np

from warmstart.selection._statistics import ALPHA, CandidateScore, choose, summarise


@dataclasses.dataclass(frozen=True)
class SimulatedTask:
    """A simulated choice: per-sample difficulty, and trainings that each shift their accuracy by some noise.

    Sample ``i`` is predicted correctly with probability ``q_i + gain_c + shared_j + own_cj``:
    ``q_i ~ Beta`` with mean ``accuracy`` and concentration ``concentration`` (so candidates agree
    on easy and hard samples, as real ones do), ``gain_c`` the candidate's true gain over the
    default, ``shared_j ~ N(0, shared_sd)`` what split ``j``'s training does to every candidate
    (the same data, order and seed) and ``own_cj ~ N(0, own_sd)`` the candidate's own training noise
    (a seed-to-seed spread of 3 points per trained model in all, as fine-tuning on few labels shows).

    Attributes:
        labels: labelled samples.
        folds: folds of the cross-validation.
        repeats: repeats of it (other folds of the same samples).
        accuracy: the default's mean accuracy.
        concentration: of the per-sample difficulty (lower: candidates agree more).
        shared_sd: training noise shared by the candidates of a split.
        own_sd: each training's own noise.
    """

    labels: int = 300
    folds: int = 3
    repeats: int = 1
    accuracy: float = 0.75
    concentration: float = 2.0
    shared_sd: float = 0.02
    own_sd: float = 0.02

    def scores(self, gains: list[float], rng: np.random.Generator) -> dict[str, CandidateScore]:
        """One draw: every candidate's :class:`CandidateScore` (the first, ``"c0"``, is the default)."""
        a = self.accuracy * self.concentration
        difficulty = rng.beta(a, self.concentration - a, self.labels)
        folds: list[list[float]] = [[] for _ in gains]
        counts = []
        for _ in range(self.repeats):
            order = rng.permutation(self.labels)
            for j in range(self.folds):
                rows = order[j::self.folds]
                counts.append(len(rows))
                shared = rng.normal(0, self.shared_sd)
                for c, gain in enumerate(gains):
                    p = np.clip(difficulty[rows] + gain + shared + rng.normal(0, self.own_sd), 0, 1)
                    folds[c].append(float((rng.random(len(rows)) < p).mean()))
        share = (self.folds - 1) / self.folds
        return {f"c{c}": summarise(f, counts, self.repeats, share) for c, f in enumerate(folds)}


def choice_rate(task: SimulatedTask, gains: list[float], draws: int = 1000, seed: int = 0, alpha: float = ALPHA) -> float:
    """The share of ``draws`` in which :func:`choose` takes the last candidate (with equal gains: any but the default).

    Examples:
        >>> round(choice_rate(SimulatedTask(labels=100), [0.0, 0.0], draws=200), 2) <= 0.05
        True
    """
    rng = np.random.default_rng(seed)
    share = (task.folds - 1) / task.folds
    wanted = f"c{len(gains) - 1}"
    hits = 0
    for _ in range(draws):
        picked = choose(task.scores(gains, rng), "c0", alpha=alpha, repeats=task.repeats, share=share)
        hits += picked != "c0" if all(g == gains[0] for g in gains) else picked == wanted
    return hits / draws
