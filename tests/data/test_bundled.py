"""Bundled real data: sizes, seeded splits, the MNIST framing of UCI digits and few-shot sampling."""

import pytest
import torch
from torch.utils.data import TensorDataset

from warmstart.data import (MNIST_MEAN, MNIST_STD, class_subset, digits, few_shot_split, few_shot_splits, labels_of,
                            mnist5k, per_class_split, transfer_split, upsample_digits)
from warmstart.errors import DataError


def test_mnist5k_is_4000_1000_by_class_and_seeded():
    data = mnist5k()
    assert data.image_shape == (1, 28, 28) and (len(data.train), len(data.test)) == (4000, 1000)
    assert torch.bincount(data.test.tensors[1]).tolist() == [100] * 10
    raw = mnist5k(normalize=False)
    x = raw.train.tensors[0]
    assert 0 <= x.min() and x.max() <= 1
    torch.testing.assert_close(data.train.tensors[0], (x - MNIST_MEAN) / MNIST_STD)
    assert torch.equal(mnist5k(seed=0).test.tensors[1], data.test.tensors[1])
    assert not torch.equal(mnist5k(seed=1).test.tensors[0], data.test.tensors[0])
    assert data.background == pytest.approx(-MNIST_MEAN / MNIST_STD)


def test_digits_split_half_and_half_and_upsampled_like_mnist():
    data = digits(size=28, normalize=False)
    assert len(data.train) + len(data.test) == 1797 and abs(len(data.train) - len(data.test)) <= 10
    assert data.num_classes == 10 and data.image_shape == (1, 28, 28) and data.background == 0
    x = data.train.tensors[0]
    assert x[..., :4, :].abs().max() == 0 and x[..., -4:, :].abs().max() == 0  # the MNIST frame: a 4-pixel border
    assert digits(size=8).image_shape == (1, 8, 8)


def test_upsampling_keeps_the_image_and_rejects_unknown_frames():
    img = torch.zeros(1, 8, 8)
    img[0, 2:6, 3:5] = 16
    full = upsample_digits(img, size=16, frame="full")
    assert full.shape == (1, 1, 16, 16) and full.max() == pytest.approx(1.0)
    assert full[0, 0, :3].max() == 0  # rows above the stroke stay blank
    with pytest.raises(DataError, match="frame must be 'mnist' or 'full'"):
        upsample_digits(img, frame="tiny")


def test_few_shot_split_takes_k_per_class_and_names_a_short_class():
    x = torch.arange(30.0).reshape(30, 1)
    y = torch.tensor([0] * 10 + [1] * 10 + [2] * 10)
    picked = few_shot_split(TensorDataset(x, y), k=3, seed=1)
    assert torch.bincount(labels_of(picked)).tolist() == [3, 3, 3]
    assert torch.equal(picked.tensors[0], few_shot_split(TensorDataset(x, y), k=3, seed=1).tensors[0])
    assert (picked.tensors[0].flatten().long() // 10 == picked.tensors[1]).all()  # rows stay paired
    with pytest.raises(DataError, match="class 2 has only 1 examples, fewer than k=2"):
        few_shot_split(TensorDataset(x[:21], y[:21]), k=2)


def test_few_shot_splits_test_on_everything_else():
    data = digits(size=8)
    train, test = few_shot_splits(data, k=5, seed=2)
    assert len(train) == 50 and len(test) == 1797 - 50
    pool = torch.cat([data.train.tensors[0], data.test.tensors[0]]).flatten(1)
    rows = {tuple(r.tolist()) for r in train.tensors[0].flatten(1)}
    assert not any(tuple(r.tolist()) in rows for r in test.tensors[0].flatten(1)[:200])  # disjoint
    assert len(pool) == len(train) + len(test)


def test_class_subset_keeps_and_relabels_the_classes_asked_for():
    data = TensorDataset(torch.arange(8.0), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3]))
    subset = class_subset(data, [3, 1])
    assert subset.tensors[0].tolist() == [1.0, 3.0, 5.0, 7.0] and subset.tensors[1].tolist() == [1, 0, 1, 0]
    assert class_subset(data, [3, 1], relabel=False).tensors[1].tolist() == [1, 3, 1, 3]
    with pytest.raises(DataError, match="has no class 7"):
        class_subset(data, [7])
    with pytest.raises(DataError, match="without repeats"):
        class_subset(data, [1, 1])


def test_transfer_split_draws_shots_then_validation_then_leaves_the_rest_unlabelled():
    # each input is its row number, so the parts can be checked against the draws made by hand
    data = TensorDataset(torch.arange(60.0), torch.arange(60) % 3)
    parts = transfer_split(data, shots=4, val_per_class=2, unlabelled=10, seed=5)
    labelled, rest = per_class_split(data, 4, seed=5)
    val, pool = per_class_split(rest, 2, seed=6)
    assert torch.equal(parts.labelled.tensors[0], labelled.tensors[0]) and torch.equal(parts.val.tensors[0], val.tensors[0])
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(5))
    assert torch.equal(parts.unlabelled, pool.tensors[0][order[:10]])
    rows = [set(t.long().tolist()) for t in (parts.labelled.tensors[0], parts.val.tensors[0], parts.unlabelled)]
    assert [len(r) for r in rows] == [12, 6, 10] and not (rows[0] & rows[1] or rows[0] & rows[2] or rows[1] & rows[2])
    everything = transfer_split(data, shots=4, val_per_class=2, seed=5).unlabelled  # None: the whole rest, in order
    assert torch.equal(everything, pool.tensors[0])
    no_shots = transfer_split(data, val_per_class=2, seed=5)  # every example not held out is labelled
    assert len(no_shots.labelled) == 54 and len(no_shots.unlabelled) == 0
    assert transfer_split(data).val is None and len(transfer_split(data).labelled) == 60
    with pytest.raises(DataError, match="only 5 examples, fewer than k=6"):
        transfer_split(data, shots=15, val_per_class=6)
    with pytest.raises(DataError, match="unlabelled .* must be >= 0"):  # a negative count would slice from the end
        transfer_split(data, shots=2, unlabelled=-3)
