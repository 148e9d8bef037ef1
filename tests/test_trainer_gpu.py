"""GPU-only checks of the Trainer: fp16 with loss scaling, bf16, torch.compile, and no host sync per step."""

from __future__ import annotations

import pytest
import torch
from conftest import make_dataset, make_mlp
from torch.utils.data import DataLoader

import warmstart as ws

pytestmark = pytest.mark.gpu


def _loader() -> DataLoader:
    return DataLoader(make_dataset(n=256), batch_size=32, shuffle=True, pin_memory=True)


@pytest.mark.parametrize("precision", ["16", "bf16", "32"])
def test_mixed_precision_trains_on_cuda(precision):
    torch.manual_seed(0)
    trainer = ws.Trainer(make_mlp(), {"name": "adam", "lr": 0.02}, precision=precision, device="cuda",
                         max_epochs=10, progress=False)
    assert (trainer.scaler is not None) == (precision == "16")
    history = trainer.fit(_loader(), _loader())
    assert history[-1]["val_accuracy"] > 0.9


def test_fp16_overflow_skips_the_optimizer_and_the_scheduler_step():
    model = make_mlp()
    trainer = ws.Trainer(model, {"name": "sgd", "lr": 0.1}, scheduler={"name": "constant"}, precision="16",
                         device="cuda", max_steps=1, progress=False)
    trainer.scaler = torch.amp.GradScaler("cuda", init_scale=2.0**60)  # the scaled loss overflows fp16
    before = [p.detach().clone() for p in model.parameters()]
    trainer.fit(_loader())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert trainer.scheduler.last_epoch == 0
    assert trainer.scaler.get_scale() < 2.0**60


def test_compile_with_inductor_trains_on_cuda():
    torch.manual_seed(0)
    trainer = ws.Trainer(make_mlp(), {"name": "adam", "lr": 0.02}, compile=True, precision="bf16", device="cuda",
                         max_epochs=5, progress=False)
    history = trainer.fit(_loader(), _loader())
    assert history[-1]["val_accuracy"] > 0.85


class _SyncGuard(ws.Callback):
    """Turn CUDA's sync debug mode to 'error' between two steps: any host sync inside raises."""

    def __init__(self, first: int, last: int):
        self.first, self.last, self.guarded_steps = first, last, 0

    def on_train_step_end(self, trainer):
        if trainer.global_step == self.first:
            torch.cuda.set_sync_debug_mode("error")
        elif trainer.global_step == self.last:
            torch.cuda.set_sync_debug_mode(0)
        elif self.first < trainer.global_step < self.last:
            self.guarded_steps += 1


@pytest.mark.parametrize("precision", ["32", "bf16"])
def test_training_steps_make_no_host_sync(precision):
    data = make_dataset(n=512)
    batches = [(x.cuda(), y.cuda()) for x, y in DataLoader(data, batch_size=32)]  # already on the device
    guard = _SyncGuard(first=2, last=14)
    model = make_mlp(dropout=0.1)
    trainer = ws.Trainer(model, torch.optim.AdamW(model.parameters(), lr=1e-3), scheduler={"name": "cosine"},
                         grad_clip=1.0, precision=precision, device="cuda", log_every=1000, callbacks=[guard],
                         progress=False, max_epochs=1)
    try:
        trainer.fit(batches)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert guard.guarded_steps == 11
