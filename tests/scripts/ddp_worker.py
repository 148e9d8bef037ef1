"""One rank of the torchrun test: train with DDP and write the weights and metrics from rank 0.

Usage: torchrun --nproc_per_node=2 ddp_worker.py OUT_DIR
Each rank sees batches of 2 and accumulates 2 micro-batches: a global batch of 8 per step.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import warmstart as ws
from warmstart.distributed import close_process_group


def build() -> tuple[nn.Module, TensorDataset]:
    """The model and data the single-process reference uses too."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 6, generator=g)
    y = (x[:, 0] - x[:, 1] > 0).long()
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 2)), TensorDataset(x, y)


def main() -> None:
    out_dir = Path(sys.argv[1])
    model, data = build()
    trainer = ws.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9), max_epochs=3,
                         accumulate=2, device="cpu", out_dir=str(out_dir / "run"), progress=True, log_every=2)
    history = trainer.fit(DataLoader(data, batch_size=2, shuffle=False), DataLoader(data, batch_size=5))
    metrics = trainer.evaluate(DataLoader(data, batch_size=7))
    if dist.get_rank() == 0:
        torch.save(model.state_dict(), out_dir / "ddp_weights.pt")
        (out_dir / "ddp_metrics.json").write_text(json.dumps({"history": history, "evaluate": metrics,
                                                               "world_size": dist.get_world_size()}))
    close_process_group()  # wait for every rank, then leave (see its docstring)


if __name__ == "__main__":
    main()
