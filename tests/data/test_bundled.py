"""Bundled real data: sizes, seeded splits, the MNIST framing of UCI digits and few-shot sampling."""

import pytest
import torch
from torch.utils.data import TensorDataset

from warmstart.data import (MNIST_MEAN, MNIST_STD, class_subset, digits, few_shot_split, few_shot_splits, labels_of,
                            mnist5k, upsample_digits)
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
