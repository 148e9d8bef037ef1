"""The shared choice by validation: stratified folds, standard errors, and the default kept unless beaten beyond noise."""

from __future__ import annotations

import statistics

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from warmstart.data import InMemoryLoader
from warmstart.errors import DataError
from warmstart.selection import (CandidateScore, choose, select, standard_error, stratified_folds, subset_loaders,
                                 summarise, trial_epochs)


def _reference_folds(labels: list[int], folds: int, order: dict[int, list[int]]) -> list[list[int]]:
    """The obvious way: walk the classes in order, each class's rows in their shuffled order, dealing fold 0, 1, 2, ..."""
    dealt: list[list[int]] = [[] for _ in range(folds)]
    position = 0
    for label in sorted(set(labels)):
        for row in order[label]:
            dealt[position % folds].append(row)
            position += 1
    return [sorted(rows) for rows in dealt]


@pytest.mark.parametrize("folds", [2, 3, 5])
def test_stratified_folds_match_the_obvious_dealing_and_are_exactly_stratified(folds):
    labels = torch.tensor([0] * 7 + [1] * 3 + [2] * 11 + [3] * 1)[torch.randperm(22, generator=torch.Generator().manual_seed(1))]
    got = [f.tolist() for f in stratified_folds(labels, folds, seed=4)]
    g = torch.Generator().manual_seed(4)
    order = {}
    for label in sorted(set(labels.tolist())):
        rows = [i for i, y in enumerate(labels.tolist()) if y == label]
        order[label] = [rows[i] for i in torch.randperm(len(rows), generator=g).tolist()]
    assert got == _reference_folds(labels.tolist(), folds, order)
    assert sorted(sum(got, [])) == list(range(22))  # every row exactly once
    for label in range(4):
        n = int((labels == label).sum())
        counts = [sum(labels[r].item() == label for r in rows) for rows in got]
        assert all(c in (n // folds, -(-n // folds)) for c in counts) and sum(counts) == n
    assert max(map(len, got)) - min(map(len, got)) <= 1
    assert got != [f.tolist() for f in stratified_folds(labels, folds, seed=5)]
    with pytest.raises(DataError, match="at least 3 labelled rows"):
        stratified_folds(torch.tensor([0, 1]), 3)


def test_standard_errors_match_the_statistics_module():
    values = [0.7, 0.8, 0.75, 0.9]
    assert standard_error(values) == pytest.approx(statistics.stdev(values) / 2)
    assert standard_error([0.5]) == 0.0
    assert summarise([0.8], val_size=100).se == pytest.approx((0.8 * 0.2 / 100) ** 0.5)
    assert summarise(values, val_size=40).se == pytest.approx(statistics.stdev(values) / 2)


def _score(*folds: float) -> CandidateScore:
    return summarise(list(folds), val_size=10)


def test_the_default_is_kept_unless_beaten_by_more_than_the_standard_error_of_the_difference():
    plain = _score(0.80, 0.70, 0.75)
    # differences 0.10, 0.00, 0.05: mean 0.05 > se 0.0289: the candidate wins
    assert choose({"plain": plain, "other": _score(0.90, 0.70, 0.80)}, "plain") == "other"
    # differences 0.10, -0.06, 0.05: mean 0.03 < se 0.0473: noise, the default stays
    assert choose({"plain": plain, "other": _score(0.90, 0.64, 0.80)}, "plain") == "plain"
    # the default is best: kept; a tie keeps the first tried
    assert choose({"plain": plain, "other": _score(0.70, 0.70, 0.70)}, "plain") == "plain"
    assert choose({"plain": plain, "same": _score(0.80, 0.70, 0.75)}, "plain") == "plain"
    # one held-out set of 400: binomial SEs, sqrt(0.8*0.2/400 + 0.85*0.15/400) = 0.0268
    one = {"plain": summarise([0.80], 400), "other": summarise([0.85], 400)}
    assert choose(one, "plain") == "other"
    one["other"] = summarise([0.82], 400)
    assert choose(one, "plain") == "plain"


def test_trial_epochs_keep_the_trials_near_the_budget():
    assert trial_epochs(10, trainings=15, share=2 / 3) == 2  # 15 x 2 x 2/3 = 20 epochs = 2 runs of 10
    assert trial_epochs(10, trainings=5, share=0.8) == 5
    assert trial_epochs(1, trainings=15, share=2 / 3) == 1


def test_select_cross_validates_small_data_and_reports_every_candidate_and_the_cost():
    x, y = torch.arange(30.0).view(30, 1), torch.arange(30) % 3
    seen = []

    def score(name, train, val, epochs):
        seen.append((name, len(train.targets), val.targets.tolist(), epochs))
        return {"plain": 0.5, "better": 0.9, "noisy": 0.55}[name] + (0.1 if name == "noisy" and len(seen) % 2 else 0)

    picked = select(["plain", "noisy", "better"], score, InMemoryLoader(x, y, batch_size=4), epochs=9)
    assert picked.choice == "better" and picked.default == "plain" and picked.trainings == 9
    assert picked.validation == "3-fold x 1 cross-validation on 30 labels"
    assert {n for n, *_ in seen} == {"plain", "noisy", "better"} and all(t == 20 for _, t, _, _ in seen)
    assert picked.trial_epochs == 3 and picked.cost == pytest.approx(9 * 3 * (2 / 3) / 9)
    assert sorted(sum((v for n, _, v, _ in seen if n == "plain"), [])) == sorted(y.tolist())  # each label scored once
    assert picked.scores["plain"] == CandidateScore(0.5, 0.0, (0.5, 0.5, 0.5))
    assert "plain 50.0 +- 0.0%" in picked.summary() and "about 2.0x the final run" in picked.summary()
    big = select(["plain", "better"], score, InMemoryLoader(x, y, batch_size=4), epochs=4, cv_below=10)
    assert big.validation == "a held-out 20% of 30 labels" and big.trainings == 2
    given = select(["plain", "better"], score, InMemoryLoader(x, y), epochs=4, val_loader=InMemoryLoader(x, y))
    assert given.validation == "the validation loader" and given.scores["plain"].se == pytest.approx((0.25 / 30) ** 0.5)


def test_subset_loaders_split_a_data_loader_the_same_way():
    data = TensorDataset(torch.arange(6.0).view(6, 1), torch.tensor([0, 0, 0, 1, 1, 1]))
    train, val = subset_loaders(DataLoader(data, batch_size=2, shuffle=True), torch.tensor([1, 4]))
    assert sorted(x.item() for b in train for x in b[0]) == [0, 2, 3, 5]
    assert [x.item() for b in val for x in b[0]] == [1, 4]
