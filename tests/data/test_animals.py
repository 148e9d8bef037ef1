"""The bundled animal silhouettes: deduplicated before the split, stratified, seeded, read without running code."""

import gzip
import pickle

import numpy as np
import pytest
import torch

from warmstart.data import ANIMAL_CLASSES, animal_shapes
from warmstart.data.animals import read_array
from warmstart.errors import DataError


def test_animal_shapes_are_deduplicated_stratified_and_seeded():
    data = animal_shapes()
    assert data.num_classes == len(ANIMAL_CLASSES) == 10 and data.image_shape == (1, 28, 28)
    assert (len(data.train), len(data.test)) == (7775, 1941)  # 10,000 less the 284 second copies
    x_train, x_test = data.train.tensors[0], data.test.tensors[0]
    assert 0 <= x_train.min() and x_train.max() <= 1 and data.background == 0
    everything = torch.cat([x_train, x_test]).flatten(1)
    assert len(torch.unique(everything, dim=0)) == len(everything)  # no image twice, so none in train and test
    train_counts, test_counts = torch.bincount(data.train.tensors[1]), torch.bincount(data.test.tensors[1])
    assert torch.allclose(test_counts.float() / (train_counts + test_counts), torch.full((10,), 0.2), atol=0.01)
    assert torch.equal(animal_shapes(seed=0).test.tensors[0], x_test)
    assert not torch.equal(animal_shapes(seed=1).test.tensors[0], x_test)
    assert animal_shapes(size=64).image_shape == (1, 64, 64)


class _RunsCode:
    def __reduce__(self):
        return (open, ("/nonexistent-warmstart-marker", "w"))  # what a tampered file would run under pickle.load


def test_a_data_file_holding_anything_but_numpy_arrays_is_refused(tmp_path):
    good = tmp_path / "good.gz"
    with gzip.open(good, "wb") as f:
        pickle.dump(np.arange(6, dtype=np.uint8).reshape(2, 3), f)
    assert read_array(good).tolist() == [[0, 1, 2], [3, 4, 5]]

    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as f:
        pickle.dump(_RunsCode(), f)
    with pytest.raises(DataError, match="refusing to load (builtins|io).open.*only numpy arrays"):
        read_array(bad)
    (tmp_path / "damaged.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match="cannot read"):
        read_array(tmp_path / "damaged.gz")


@pytest.mark.parametrize("fraction, part", [(0.0001, "no test image"), (0.9999, "no training image")])
def test_a_test_fraction_that_empties_a_class_is_refused(fraction, part):
    with pytest.raises(DataError, match=rf"test_fraction={fraction} leaves class 0 \(\d+ images\) {part}"):
        animal_shapes(test_fraction=fraction)


def test_a_label_outside_the_ten_classes_and_a_negative_seed_are_refused(monkeypatch):
    from warmstart.data import animals

    x, y = animals._animal_arrays()
    bad = y.copy()
    bad[5] = 2**56  # what a damaged file held: num_classes was 5.6e16
    monkeypatch.setattr(animals, "_animal_arrays", lambda: (x, bad))
    with pytest.raises(DataError, match="label 72057594037927936, outside the set's 10 classes.*reinstall"):
        animal_shapes()
    monkeypatch.undo()
    with pytest.raises(DataError, match="seed must be a whole number >= 0, got -1"):
        animal_shapes(seed=-1)
