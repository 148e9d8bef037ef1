"""The statistics of a choice: Student's t against scipy, standard errors, and the false-choice rate measured."""

from __future__ import annotations

import statistics

import pytest

from warmstart.selection import (CandidateScore, SimulatedTask, binomial_se, choice_rate, choose, standard_error,
                                 summarise, t_cdf, t_quantile)


@pytest.mark.parametrize("df", [1, 2, 3, 4, 7, 8, 16, 31])
def test_student_t_matches_scipy(df):
    stats = pytest.importorskip("scipy.stats")
    for p in (0.5, 0.9, 0.95, 0.975, 0.9875, 0.999):
        assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), abs=1e-6)
    for t in (-3.0, -0.4, 0.0, 1.3, 6.0):
        assert t_cdf(t, df) == pytest.approx(stats.t.cdf(t, df), abs=1e-9)


def test_student_t_matches_the_printed_tables():
    assert t_quantile(0.975, 2) == pytest.approx(4.303, abs=5e-4)
    assert t_quantile(0.95, 5) == pytest.approx(2.015, abs=5e-4)
    assert t_quantile(0.99, 10) == pytest.approx(2.764, abs=5e-4)


def test_standard_errors_match_the_statistics_module_and_the_binomial_floor():
    values = [0.7, 0.8, 0.75, 0.9]
    assert standard_error(values) == pytest.approx(statistics.stdev(values) / 2)
    assert standard_error([0.5]) == 0.0
    assert summarise([0.8], [100]).se == pytest.approx((0.8 * 0.2 / 100) ** 0.5)
    assert summarise(values, [100] * 4).se == pytest.approx(statistics.stdev(values) / 2)  # the spread dominates
    flat = summarise([0.8, 0.8, 0.8], [100, 100, 100])  # no spread: what 300 samples allow
    assert flat.se == pytest.approx((0.8 * 0.2 / 300) ** 0.5) and flat.counts == (100, 100, 100)
    # two repeats of 3 folds score the same 300 samples twice: the corrected factor 1/6 + 1/2, and N = 300
    repeated = summarise([0.7, 0.8, 0.75, 0.72, 0.78, 0.76], [100] * 6, repeats=2, share=2 / 3)
    assert repeated.se == pytest.approx(((1 / 6 + 1 / 2) * statistics.variance(repeated.folds)) ** 0.5)


def _scores(*folds: float, count: int = 300) -> CandidateScore:
    return summarise(list(folds), [count] * len(folds))


def test_a_clear_gain_on_every_fold_is_chosen_and_noise_is_not():
    plain = _scores(0.70, 0.72, 0.71)
    assert choose({"plain": plain, "better": _scores(0.80, 0.83, 0.81)}, "plain") == "better"
    # the old rule (mean gain > its standard error) chose this: gains 0.10, -0.06, 0.05 over three folds
    assert choose({"plain": plain, "noisy": _scores(0.80, 0.66, 0.76)}, "plain") == "plain"
    assert choose({"plain": plain, "same": _scores(0.70, 0.72, 0.71)}, "plain") == "plain"  # a tie keeps the default
    assert choose({"plain": plain, "worse": _scores(0.60, 0.62, 0.61)}, "plain") == "plain"


def test_choosing_the_best_of_several_needs_a_larger_gain():
    plain = _scores(0.70, 0.72, 0.71, 0.69, 0.73)
    gain = _scores(0.73, 0.76, 0.735, 0.74, 0.75)  # +3.3 points on average, on every fold of 300
    assert choose({"plain": plain, "gain": gain}, "plain") == "gain"
    others = {f"other{i}": _scores(0.70, 0.72, 0.71, 0.69, 0.73) for i in range(3)}
    assert choose({"plain": plain, **others, "gain": gain}, "plain") == "plain"  # best of 4: not beyond chance


def test_repeats_of_the_same_folds_are_no_new_evidence():
    plain, gain = _scores(0.70, 0.72, 0.71), _scores(0.77, 0.73, 0.77)
    once = choose({"plain": plain, "gain": gain}, "plain")
    twice = {name: summarise(s.folds * 2, s.counts * 2, repeats=2, share=2 / 3) for name, s in
             {"plain": plain, "gain": gain}.items()}
    assert once == "plain" and choose(twice, "plain", repeats=2, share=2 / 3) == "plain"  # treated as 6 pairs: 'gain'
    # one held-out set: the binomial standard error of the difference on its real sample count
    one = {"plain": summarise([0.80], [400]), "other": summarise([0.86], [400])}
    assert binomial_se(one["other"], one["plain"]) == pytest.approx(((0.8 * 0.2 + 0.86 * 0.14) / 400) ** 0.5)
    assert choose(one, "plain") == "other"
    one["other"] = summarise([0.83], [400])
    assert choose(one, "plain") == "plain"


TASKS = [SimulatedTask(labels=100, folds=5), SimulatedTask(labels=300, folds=3), SimulatedTask(labels=1000, folds=5),
         SimulatedTask(labels=300, folds=3, repeats=2)]


@pytest.mark.parametrize("candidates", [2, 5])
@pytest.mark.parametrize("task", TASKS, ids=lambda t: f"{t.labels}-labels-{t.folds}x{t.repeats}")
def test_with_equal_candidates_the_default_is_kept_in_at_least_95_percent_of_draws(task, candidates):
    assert choice_rate(task, [0.0] * candidates, draws=1000, seed=candidates) <= 0.05


@pytest.mark.parametrize("candidates", [2, 5])
def test_a_candidate_10_points_better_is_chosen_in_at_least_80_percent_of_draws(candidates):
    task = SimulatedTask(labels=1000, folds=5)
    assert choice_rate(task, [0.0] * (candidates - 1) + [0.10], draws=500, seed=candidates) >= 0.80
