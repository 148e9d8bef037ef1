"""Fixtures for the compression tests: one thread, and a small CNN trained on the real 8x8 UCI digits."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="package", autouse=True)
def one_thread():
    """Run this package on one thread: tiny ops on two threads crawl when another job shares the two cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="package")
def digits_cnn(one_thread) -> dict:
    """``small_cnn(width=8)`` trained 10 epochs on the 899 UCI training digits at 8x8 (about 1 s), and the data.

    Tests copy the model; they must not train it in place.
    """
    import warmstart as ws
    from warmstart.data import InMemoryLoader, digits
    from warmstart.models import small_cnn

    data = digits(size=8)
    torch.manual_seed(0)
    model = small_cnn(num_classes=10, width=8)
    trainer = ws.Trainer(model, {"name": "adamw", "lr": 3e-3}, scheduler={"name": "cosine"}, max_epochs=10,
                         progress=False, seed=0)
    trainer.fit(InMemoryLoader(data.train, batch_size=64, shuffle=True))
    test = InMemoryLoader(data.test, batch_size=500)
    return {"model": model.eval(), "data": data, "test": test, "accuracy": trainer.evaluate(test)["accuracy"]}
