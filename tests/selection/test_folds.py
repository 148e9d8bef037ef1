"""The splits a choice is scored on: stratified folds, made by the loader's one way of taking a part."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset, WeightedRandomSampler
from torchvision.transforms import v2

from warmstart.data import BatchAugment, InMemoryLoader, build_augmentation, is_random, without_augmentation
from warmstart.efficientnet import efficientnet_lite_input
from warmstart.errors import DataError
from warmstart.selection import labels_of_loader, plan_splits, select, stratified_folds


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


def _splits(loader, **options):
    return plan_splits(loader, None, **{"val_fraction": 0.2, "folds": 3, "repeats": 1, "cv_below": 2000, "seed": 0,
                                        **options})[0]


def test_validation_folds_keep_the_deterministic_transform_and_drop_the_random_one():
    x, y = torch.rand(30, 1, 8, 8), torch.arange(30) % 3
    normalise = lambda b: (b - 0.5) / 0.25  # noqa: E731  (a plain function: kept)
    for split in _splits(InMemoryLoader(x, y, batch_size=4, shuffle=True, transform=normalise)):
        inputs = torch.cat([b[0] for b in split.val])
        assert inputs.min() < 0 and inputs.max() > 1  # normalised as in training, not raw [0, 1] (issue 36, 1)
        assert split.train.transform is normalise and split.train.shuffle
    lite = efficientnet_lite_input(0, size=32)
    both = torch.nn.Sequential(BatchAugment(build_augmentation("digits", batched=True).config), lite)
    for split in _splits(InMemoryLoader(x, y, batch_size=4, transform=both)):
        val = next(iter(split.val))[0]
        assert val.shape == (len(val), 3, 32, 32)  # the network's input: 3 channels at its side
        assert not is_random(split.val.transform) and split.train.transform is both
    composed = v2.Compose([v2.RandomHorizontalFlip(), v2.Normalize([0.5], [0.5])])
    assert [type(t).__name__ for t in without_augmentation(composed).transforms] == ["Normalize"]
    assert without_augmentation(v2.RandomHorizontalFlip()) is None


class _Flip:
    """A data set transform that flips at random (a torchvision-style name)."""

    def __init__(self):
        self.transforms = [v2.RandomHorizontalFlip(p=1.0)]

    def __call__(self, x):
        return x.flip(-1)


class _Images(torch.utils.data.Dataset):
    def __init__(self, n: int, transform=None):
        self.x, self.y, self.transform = torch.rand(n, 1, 4, 4), torch.arange(n) % 2, transform

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        x = self.x[i] if self.transform is None else self.transform(self.x[i])
        return x, self.y[i]


def test_a_data_loader_keeps_its_sampler_and_its_weights_in_the_training_part():
    data = _Images(40, transform=_Flip())
    weights = torch.where(data.y == 1, 9.0, 1.0)  # class 1 drawn 9x as often
    loader = DataLoader(data, batch_size=8, sampler=WeightedRandomSampler(weights, 400,
                                                                          generator=torch.Generator().manual_seed(0)))
    split = _splits(loader)[0]
    assert isinstance(split.train.sampler, WeightedRandomSampler) and split.train.sampler.num_samples == 400 * 26 // 40  # 26 of 40 rows: as many draws per row
    drawn = torch.cat([b[1] for b in split.train])
    assert 0.8 < drawn.float().mean() < 0.97  # the weights kept: not class-sorted sequential order (issue 36, 6)
    val_x = torch.cat([b[0] for b in split.val])
    val_rows = [i for i in range(40) if any(torch.equal(val_x[j], data.x[i]) for j in range(len(val_x)))]
    assert len(val_rows) == split.count  # read without the random flip, in order
    shuffled = _splits(DataLoader(data, batch_size=8, shuffle=True))[0]
    assert isinstance(shuffled.train.sampler, RandomSampler)


def test_a_custom_batch_sampler_is_refused_with_the_way_round():
    class Pairs(BatchSampler):
        pass

    data = TensorDataset(torch.rand(20, 2), torch.arange(20) % 2)
    loader = DataLoader(data, batch_sampler=Pairs(RandomSampler(data), 2, False))
    with pytest.raises(DataError, match="Pairs, which cannot be restricted.*pass a val_loader"):
        _splits(loader)


def test_soft_targets_are_stratified_and_scored_by_their_most_probable_class():
    soft = torch.softmax(torch.randn(30, 3), dim=1)
    classes = soft.argmax(1)
    loader = InMemoryLoader(torch.rand(30, 2), soft, batch_size=4)
    assert torch.equal(labels_of_loader(loader), classes)
    for split in _splits(loader):
        assert split.val.targets.dtype == torch.long and torch.equal(split.val.targets, split.labels)
    with pytest.raises(DataError, match="needs class labels.*regression"):
        _splits(InMemoryLoader(torch.rand(30, 2), torch.rand(30), batch_size=4))


def test_a_list_val_loader_counts_its_real_samples_and_a_clear_winner_is_chosen():
    data = InMemoryLoader(torch.rand(60, 2), torch.arange(60) % 3, batch_size=8)
    val = [(torch.rand(50, 2), torch.arange(50) % 3) for _ in range(4)]  # 200 samples, a plain list
    picked = select(["plain", "better"], lambda n, tr, va, e, s: {"plain": 0.5, "better": 0.9}[n], data, epochs=2,
                    val_loader=val)
    assert picked.scores["plain"].counts == (200,) and picked.choice == "better"  # issue 36, 2
    assert picked.scores["plain"].se == pytest.approx((0.25 / 200) ** 0.5)
    with pytest.raises(DataError, match="val_loader holds no samples"):
        select(["plain", "better"], lambda n, tr, va, e, s: 0.5, data, epochs=2, val_loader=[])


def test_text_batches_are_split_by_their_labels():
    """Folds of a text loader (dict items, labels on the data set) found no labels at item[1]."""
    from warmstart.data import CharNgramTokenizer, TextSet, text_loader

    data = TextSet([f"word{i}" for i in range(40)], torch.arange(40) % 2)
    splits = _splits(text_loader(data, CharNgramTokenizer(buckets=50), batch_size=8, shuffle=True), folds=5)
    assert [split.count for split in splits] == [8] * 5
    for split in splits:
        labels = torch.cat([batch["labels"] for batch in split.val])
        assert torch.equal(labels, split.labels) and labels.float().mean() == 0.5  # stratified
