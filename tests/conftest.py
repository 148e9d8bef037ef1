"""Shared fixtures: tiny models and data sets that train in milliseconds on the CPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``gpu`` when CUDA is not available."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def make_mlp(in_features: int = 10, hidden: int = 16, classes: int = 3, dropout: float = 0.0) -> nn.Sequential:
    """A two-layer classifier."""
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, classes))


def make_dataset(n: int = 64, in_features: int = 10, classes: int = 3, seed: int = 0) -> TensorDataset:
    """A learnable toy classification set: the label is the argmax of three fixed projections."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, in_features, generator=g)
    w = torch.randn(in_features, classes, generator=g)
    return TensorDataset(x, (x @ w).argmax(1))


@pytest.fixture
def dataset() -> TensorDataset:
    return make_dataset()


@pytest.fixture
def loader(dataset: TensorDataset) -> DataLoader:
    return DataLoader(dataset, batch_size=16, shuffle=True)
