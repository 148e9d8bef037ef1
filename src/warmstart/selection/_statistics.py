"""The statistics of a choice: scores over folds, Student's t, and a default kept unless beaten beyond chance."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from statistics import NormalDist

ALPHA = 0.05  # the chance of choosing another candidate when all are equally good (family-wise, one-sided)


@dataclasses.dataclass(frozen=True)
class CandidateScore:
    """One candidate's validation accuracy over the splits.

    Attributes:
        mean: mean accuracy over the splits.
        se: its standard error (see :func:`summarise`).
        folds: the accuracy on each split (repeats one after another).
        counts: the validation samples of each split.
    """

    mean: float
    se: float
    folds: tuple[float, ...]
    counts: tuple[int, ...] = ()

    def __str__(self) -> str:
        return f"{100 * self.mean:.1f} +- {100 * self.se:.1f}%"


def standard_error(values: Sequence[float]) -> float:
    """``stdev(values) / sqrt(n)`` with the sample stdev (``n - 1``); 0 for fewer than two values."""
    if len(values) < 2:
        return 0.0
    return math.sqrt(_variance(values) / len(values))


def _variance(values: Sequence[float]) -> float:
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values) / (len(values) - 1)


def split_factor(splits: int, repeats: int, share: float) -> float:
    """The variance factor of a mean over ``splits`` scores: ``1 / splits``, or with repeats of a cross-validation
    (which score the same samples again) the corrected ``1 / splits + (1 - share) / share`` of Nadeau and Bengio
    (2003), as Bouckaert and Frank (2004) use it for repeated k-fold."""
    return 1 / splits + ((1 - share) / share if repeats > 1 else 0.0)


def summarise(folds: Sequence[float], counts: Sequence[int], repeats: int = 1, share: float = 1.0) -> CandidateScore:
    """A :class:`CandidateScore` of per-split accuracies and the validation samples of each split.

    ``se`` is the larger of ``sqrt(split_factor * stdev(folds)^2)`` (two or more splits) and the
    binomial ``sqrt(mean * (1 - mean) / N)`` on the ``N = sum(counts) / repeats`` distinct
    validation samples: the spread between trainings, and what the number of validation samples
    alone allows.

    Examples:
        >>> summarise([0.8], [100]).se
        0.04
    """
    folds, counts = tuple(float(f) for f in folds), tuple(int(c) for c in counts)
    mean = sum(folds) / len(folds)
    samples = max(sum(counts) / repeats, 1.0)
    se = math.sqrt(max(mean * (1 - mean), 0.0) / samples)
    if len(folds) > 1:
        se = max(se, math.sqrt(split_factor(len(folds), repeats, share) * _variance(folds)))
    return CandidateScore(mean=mean, se=se, folds=folds, counts=counts)


def t_cdf(t: float, df: int) -> float:
    """``P(T <= t)`` for Student's t with ``df`` (integer) degrees of freedom, in closed form.

    With ``theta = atan(t / sqrt(df))``, ``P(|T| < |t|)`` is a finite sum of powers of
    ``cos(theta)`` (Abramowitz and Stegun 26.7.3 and 26.7.4).

    Examples:
        >>> round(t_cdf(4.302653, 2), 4)
        0.975
    """
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    theta = math.atan(abs(t) / math.sqrt(df))
    cos2, sin = math.cos(theta) ** 2, math.sin(theta)
    if df % 2 == 0:  # sin(theta) * (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ... up to cos^(df-2))
        term = total = 1.0
        for k in range(2, df - 1, 2):
            term *= cos2 * (k - 1) / k
            total += term
        inside = sin * total
    else:  # 2/pi * (theta + sin(theta) * (cos + 2/3 cos^3 + ... up to cos^(df-2)))
        total = 0.0
        if df > 1:
            term = total = math.cos(theta)
            for k in range(3, df - 1, 2):
                term *= cos2 * (k - 1) / k
                total += term
        inside = 2 / math.pi * (theta + sin * total)
    return 0.5 + 0.5 * inside if t >= 0 else 0.5 - 0.5 * inside


@functools.lru_cache(maxsize=256)
def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (bisection on :func:`t_cdf`, ``p >= 0.5``).

    Examples:
        >>> round(t_quantile(0.975, 2), 3)
        4.303
    """
    if not 0.5 <= p < 1:
        raise ValueError(f"t_quantile takes 0.5 <= p < 1, got {p}")
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if t_cdf(mid, df) < p else (low, mid)
    return (low + high) / 2


def z_quantile(p: float) -> float:
    """The ``p`` quantile of the standard normal distribution."""
    return NormalDist().inv_cdf(p)


def best_of(scores: Mapping[str, CandidateScore]) -> str:
    """The candidate with the highest mean (the first tried on a tie)."""
    names = list(scores)
    return max(names, key=lambda n: (scores[n].mean, -names.index(n)))


def choose(scores: Mapping[str, CandidateScore], default: str, *, alpha: float = ALPHA, repeats: int = 1,
           share: float = 1.0) -> str:
    """The best mean, when it beats ``default`` beyond chance after allowing for choosing the best of several.

    With ``m`` challengers (the candidates other than ``default``), the best ``b`` replaces
    ``default`` only when its paired gain ``d_j = b_j - default_j`` over the ``J`` splits passes,
    at the one-sided level ``alpha / m`` (Bonferroni: all the challengers together choose
    wrongly at most ``alpha`` of the time when every candidate is equally good), both of:

    1. the validation count: ``mean(d) > z(1 - alpha/m) * sqrt((p_b (1 - p_b) + p_d (1 - p_d)) / N)``
       on the ``N`` distinct validation samples (the only test with one split);
    2. the spread between trainings (``J >= 2``): ``mean(d) > t(1 - alpha/m, df) * sqrt(f * s^2)``
       with ``f`` = :func:`split_factor` (the corrected resampled t-test for repeats, whose
       splits score the same samples again) and ``s^2`` the larger of this challenger's variance of
       ``d`` and the mean of every challenger's (``df = m (J - 1)``: the challengers' spreads pooled,
       a better estimate from three folds than one's alone).

    Measured on simulated trainings (``python bench/selection_rates.py``, 2,000 draws a cell;
    ``tests/selection/test_statistics.py`` asserts the bounds): with every candidate equally good
    another than the default is chosen in 0.0-3.2% of draws (2 or 5 candidates, 100 to 1,000
    labels, 3 or 5 folds, 1 or 2 repeats), where the rule this replaced (mean gain above its
    standard error) chose in 18-21% and 39-46%; a challenger 10 points better is chosen in 96% (2
    candidates) and 88% (5) of draws with 1,000 labels and 5 folds, 77% and 70% with 3 folds, and
    24% and 9% with 100 labels: on few labels a real gain of 10 points is mostly not told from
    noise, and the default is kept.

    Args:
        scores: each candidate's :class:`CandidateScore`, on the same splits.
        default: the candidate kept unless beaten.
        alpha: the family-wise chance of a wrong choice.
        repeats: repeats of the cross-validation among the splits.
        share: the part of the labels each trial trained on (``(k - 1) / k`` for k folds).

    Examples:
        >>> plain = summarise([0.70, 0.72, 0.71], [300, 300, 300])
        >>> better = summarise([0.80, 0.83, 0.81], [300, 300, 300])
        >>> choose({"plain": plain, "better": better}, "plain")
        'better'
    """
    best = best_of(scores)
    if best == default:
        return default
    challengers = [n for n in scores if n != default]
    level = 1 - alpha / len(challengers)
    gain = scores[best].mean - scores[default].mean
    if gain <= z_quantile(level) * binomial_se(scores[best], scores[default], repeats):
        return default
    splits = len(scores[default].folds)
    if splits > 1:
        own = _variance(_gains(scores[best], scores[default]))
        pooled = sum(_variance(_gains(scores[n], scores[default])) for n in challengers) / len(challengers)
        se = math.sqrt(split_factor(splits, repeats, share) * max(own, pooled))
        if gain <= t_quantile(level, len(challengers) * (splits - 1)) * se:
            return default
    return best


def binomial_se(a: CandidateScore, b: CandidateScore, repeats: int = 1) -> float:
    """``sqrt((p_a (1 - p_a) + p_b (1 - p_b)) / N)``: the standard error of ``a.mean - b.mean`` that the ``N``
    distinct validation samples alone allow (both scored on the same samples)."""
    samples = max(sum(b.counts) / repeats, 1.0) if b.counts else 1.0
    return math.sqrt(max(a.mean * (1 - a.mean) + b.mean * (1 - b.mean), 1e-12) / samples)


def detectable_gain(default: CandidateScore, challengers: int, alpha: float = ALPHA, repeats: int = 1) -> float:
    """The smallest gain over ``default`` that test 1 of :func:`choose` can accept: ``z(1 - alpha/m) * sqrt(2 p (1 - p) / N)``."""
    samples = max(sum(default.counts) / repeats, 1.0) if default.counts else 1.0
    p = min(max(default.mean, 0.05), 0.95)  # a default at 0 or 100% would claim a detectable gain of 0
    return z_quantile(1 - alpha / max(challengers, 1)) * math.sqrt(2 * p * (1 - p) / samples)


def _gains(a: CandidateScore, b: CandidateScore) -> list[float]:
    return [x - y for x, y in zip(a.folds, b.folds)]
