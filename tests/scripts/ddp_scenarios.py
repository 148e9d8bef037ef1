"""One rank of the torchrun scenario test: the library's trainers and loaders under DDP, results saved per rank.

Usage: torchrun --nproc_per_node=2 ddp_scenarios.py OUT_DIR
Scenarios (each a function below, its reference in tests/test_distributed.py):
- stream: a loader without len(), accumulation 4 over 10 micro-batches (a short last window);
- finetune: FinetuneTrainer, gradual unfreezing with the proximal term, batches of 2 per rank;
- distill: DistillTrainer with the teacher's logits cached once by rank 0 into the shared out_dir;
- evaluate: an InMemoryLoader of 5 samples evaluated on 2 ranks (each sample counted once);
- streams: the random numbers each rank draws after the fit's seeding (each rank its own stream);
- batchnorm: a BatchNorm model with validation and checkpoints (its statistics synchronised before both);
- refused: a fresh run into the batchnorm run's folder (refused on every rank);
- batches: a plain list of 10 batches (batch i on rank i % 2), and one of 5 (padded, with a warning);
- bad_label: an out-of-range label on rank 1 only: every rank stops with the DataError (none hangs).
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

import warmstart as ws
from warmstart.data import InMemoryLoader
from warmstart.distill import DistillTrainer
from warmstart.distributed import close_process_group
from warmstart.finetune import FinetuneTrainer


def data(n: int = 40) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 6, generator=g)
    return TensorDataset(x, (x[:, 0] - x[:, 1] > 0).long() + (x[:, 2] > 0.5).long())


def model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))


class Stream:
    """A loader without len()."""

    def __init__(self, loader):
        self.loader = loader

    def __iter__(self):
        return iter(self.loader)


def stream(out: Path, rank: int) -> dict:
    net = model()
    shard = Subset(data(), range(rank, 40, 2))  # 20 samples per rank: 10 micro-batches of 2
    trainer = ws.Trainer(net, torch.optim.SGD(net.parameters(), lr=0.3), accumulate=4, max_epochs=2, device="cpu",
                         progress=False, seed=0)
    trainer.fit(Stream(DataLoader(shard, batch_size=2)))
    return {"weights": net.state_dict(), "steps": trainer.global_step}


def finetune(out: Path, rank: int) -> dict:
    net = model()
    trainer = FinetuneTrainer(net, {"name": "sgd", "lr": 0.2, "momentum": 0.9}, method={"name": "gradual"},
                              groups=["0", "2"], proximal=2.0, max_epochs=3, device="cpu", progress=False, seed=0,
                              out_dir=str(out / "finetune"))
    trainer.fit(DataLoader(data(), batch_size=2, shuffle=False))
    return {"weights": net.state_dict(), "history": trainer.history}


def distill(out: Path, rank: int) -> dict:
    teacher, student = model(seed=5), model(seed=6)
    trainer = DistillTrainer(student, teacher, {"name": "adam", "lr": 1e-2}, temperature=2.0, alpha=0.5,
                             cache_teacher=True, max_epochs=2, device="cpu", progress=False, seed=0,
                             out_dir=str(out / "distill"))
    trainer.fit(InMemoryLoader(data(), batch_size=4, shuffle=True, seed=3))
    return {"weights": student.state_dict(), "cache_rows": int(trainer.cache.logits.shape[0])}


def evaluate(out: Path, rank: int) -> dict:
    net = model()
    five = data(5)
    return {"metrics": ws.Trainer(net, device="cpu", progress=False).evaluate(InMemoryLoader(five, batch_size=2))}


class _Draws(ws.Callback):
    def on_fit_start(self, trainer):
        self.draws = torch.rand(4)


def streams(out: Path, rank: int) -> dict:
    draws = _Draws()
    ws.Trainer(model(), max_steps=1, device="cpu", progress=False, seed=11, callbacks=[draws]).fit(
        DataLoader(data(), batch_size=4))
    return {"draws": draws.draws}


def batchnorm_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


def batchnorm(out: Path, rank: int) -> dict:
    net = batchnorm_model()
    trainer = ws.Trainer(net, {"name": "sgd", "lr": 0.1}, max_epochs=2, device="cpu", progress=False, seed=0,
                         out_dir=str(out / "batchnorm"))
    trainer.fit(DataLoader(data(), batch_size=4, shuffle=True), DataLoader(data(), batch_size=8))
    return {"buffers": {n: b.clone() for n, b in net.named_buffers()}, "history": trainer.history}


def refused(out: Path, rank: int) -> dict:
    """A fresh run into the batchnorm run's folder: refused on every rank, so no rank trains on alone and hangs."""
    try:
        ws.Trainer(model(), device="cpu", progress=False, out_dir=str(out / "batchnorm")).fit(
            DataLoader(data(), batch_size=4))
    except ws.RunExistsError as err:
        return {"refused": str(err)}
    return {"refused": None}


def batches(out: Path, rank: int) -> dict:
    """A plain list of batches is dealt out like a loader: each rank trains on its share, not on every batch."""
    x, y = data().tensors
    ten = [(x[i:i + 4], y[i:i + 4]) for i in range(0, 40, 4)]
    net = model()
    trainer = ws.Trainer(net, torch.optim.SGD(net.parameters(), lr=0.3), max_epochs=2, device="cpu", progress=False,
                         seed=0)
    trainer.fit(ten)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        uneven = ws.Trainer(model(), max_epochs=1, device="cpu", progress=False, seed=0)
        uneven.fit(ten[:5])
    return {"weights": net.state_dict(), "steps": trainer.global_step, "uneven_steps": uneven.global_step,
            "warnings": [str(w.message) for w in caught if "does not divide" in str(w.message)]}


def bad_label(out: Path, rank: int) -> dict:
    """A label out of range on one rank, past the first batch: every rank raises at the same read, none fails alone."""
    x, y = data().tensors
    y = y.clone()
    if rank == 1:
        y[13] = 5  # the model has 3 outputs; list batch 3 (rows 12-15) is this rank's second
    trainer = ws.Trainer(model(), max_epochs=1, device="cpu", progress=False, log_every=5, seed=0)
    try:
        trainer.fit([(x[i:i + 4], y[i:i + 4]) for i in range(0, 40, 4)] * 2)  # 10 batches a rank
    except ws.DataError as err:
        return {"error": str(err), "steps": trainer.global_step}
    return {"error": None, "steps": trainer.global_step}


def main() -> None:
    out = Path(sys.argv[1])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    results = {name: scenario(out, rank) for name, scenario in
               (("stream", stream), ("finetune", finetune), ("distill", distill), ("evaluate", evaluate),
                ("streams", streams), ("batchnorm", batchnorm), ("refused", refused), ("batches", batches),
                ("bad_label", bad_label))}
    torch.save(results, out / f"rank{rank}.pt")
    if rank == 0:
        (out / "done.json").write_text(json.dumps({"world_size": dist.get_world_size()}))
    close_process_group()  # wait for every rank, then leave (see its docstring)


if __name__ == "__main__":
    main()
