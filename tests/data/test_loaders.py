"""InMemoryLoader: every sample once per epoch, seeded order, sharding, transforms and indices."""

import pytest
import torch
from torch.utils.data import TensorDataset

from warmstart.data import InMemoryLoader, WithIndex, dataset_tensors
from warmstart.errors import DataError


def _data(n: int = 10) -> TensorDataset:
    return TensorDataset(torch.arange(float(n)).reshape(n, 1), torch.arange(n))


def test_each_epoch_is_a_seeded_permutation():
    loader = InMemoryLoader(_data(), batch_size=3, shuffle=True, seed=4)
    assert len(loader) == 4
    first = torch.cat([y for _, y in loader])
    assert sorted(first.tolist()) == list(range(10)) and first.tolist() != list(range(10))
    assert torch.equal(first, torch.cat([y for _, y in loader]))  # same epoch, same order
    loader.set_epoch(1)
    assert not torch.equal(first, torch.cat([y for _, y in loader]))
    assert [len(y) for _, y in InMemoryLoader(_data(), batch_size=3, drop_last=True)] == [3, 3, 3]


def test_shards_cover_the_epoch_with_equal_batch_counts():
    loaders = [InMemoryLoader(_data(11), batch_size=2, shuffle=True) for _ in range(2)]
    for rank, loader in enumerate(loaders):
        loader.shard(rank, 2)
    assert len(loaders[0]) == len(loaders[1]) == 3
    seen = torch.cat([y for loader in loaders for _, y in loader])
    assert set(seen.tolist()) == set(range(11)) and len(seen) == 12  # padded by one wrapped sample


def test_transform_and_indices():
    loader = InMemoryLoader(_data(), batch_size=4, transform=lambda x: x * 10, with_index=True)
    x, y, index = next(iter(loader))
    assert torch.equal(x.flatten(), y.float() * 10) and torch.equal(index, y)
    assert WithIndex(_data())[7][2] == 7


def test_any_map_style_dataset_is_stacked_and_bad_input_is_named():
    pairs = [(torch.tensor([float(i)]), i) for i in range(5)]
    x, y = dataset_tensors(pairs)
    assert x.shape == (5, 1) and y.tolist() == list(range(5))
    with pytest.raises(DataError, match="differ in length: 3 vs 2"):
        InMemoryLoader(torch.zeros(3, 1), torch.zeros(2))
    with pytest.raises(DataError, match="batch_size must be >= 1"):
        InMemoryLoader(_data(), batch_size=0)
