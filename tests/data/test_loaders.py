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


def test_training_shards_cover_the_epoch_with_equal_batch_counts():
    loader = InMemoryLoader(_data(11), batch_size=2, shuffle=True, seed=0)
    shards = [loader.shard(rank, 2) for rank in range(2)]
    assert len(loader) == 6 and loader.world_size == 1  # the loader itself is not changed
    assert len(shards[0]) == len(shards[1]) == 3
    seen = torch.cat([y for shard in shards for _, y in shard])
    assert set(seen.tolist()) == set(range(11)) and len(seen) == 12  # padded by one wrapped sample


def test_evaluation_shards_count_every_sample_once():
    loader = InMemoryLoader(_data(5), batch_size=2)
    shards = [loader.shard(rank, 2, pad=False) for rank in range(2)]
    seen = sorted(torch.cat([y for shard in shards for _, y in shard]).tolist())
    assert seen == list(range(5)) and [len(s) for s in shards] == [2, 1]


def test_without_a_seed_the_order_follows_torch_manual_seed():
    def order(seed: int) -> list[int]:
        torch.manual_seed(seed)
        return torch.cat([y for _, y in InMemoryLoader(_data(), batch_size=4, shuffle=True)]).tolist()

    assert order(1) == order(1) and order(1) != order(2)


def test_transform_and_indices():
    loader = InMemoryLoader(_data(), batch_size=4, transform=lambda x: x * 10, with_index=True)
    x, y, index = next(iter(loader))
    assert torch.equal(x.flatten(), y.float() * 10) and torch.equal(index, y)
    assert WithIndex(_data())[7][2] == 7
    unlabelled = InMemoryLoader(torch.arange(6.0).reshape(6, 1), None, batch_size=4, with_index=True)
    x, index = next(iter(unlabelled))  # no labels: the index follows the inputs
    assert torch.equal(x.flatten(), index.float())
    assert WithIndex([torch.tensor(3.0)])[0] == (torch.tensor(3.0), 0)


def test_any_map_style_dataset_is_stacked_and_bad_input_is_named():
    pairs = [(torch.tensor([float(i)]), i) for i in range(5)]
    x, y = dataset_tensors(pairs)
    assert x.shape == (5, 1) and y.tolist() == list(range(5))
    with pytest.raises(DataError, match="differ in length: 3 vs 2"):
        InMemoryLoader(torch.zeros(3, 1), torch.zeros(2))
    with pytest.raises(DataError, match="batch_size must be an integer >= 1"):
        InMemoryLoader(_data(), batch_size=0)
