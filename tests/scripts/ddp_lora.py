"""One rank of the LoRA torchrun test: FinetuneTrainer(method="lora") under DDP, its weights saved per rank.

Usage: torchrun --nproc_per_node=2 ddp_lora.py OUT_DIR (the reference, one process, is ``train`` with batch 8).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from warmstart.distributed import close_process_group
from warmstart.finetune import FinetuneTrainer


def data(n: int = 48) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 6, generator=g)
    return TensorDataset(x, (x[:, 0] - x[:, 1] > 0).long() + (x[:, 2] > 0.5).long())


def train(out: Path, batch_size: int) -> dict[str, torch.Tensor]:
    """LoRA (no dropout: the ranks would draw other masks than one process) on a small MLP, 3 epochs of SGD."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))
    trainer = FinetuneTrainer(model, {"name": "sgd", "lr": 0.2, "momentum": 0.9}, method="lora",
                              lora={"r": 4, "dropout": 0.0}, max_epochs=3, device="cpu", progress=False, seed=0,
                              out_dir=str(out))
    trainer.fit(DataLoader(data(), batch_size=batch_size, shuffle=False))
    return {k: v.clone() for k, v in model.state_dict().items()}


def main() -> None:
    out = Path(sys.argv[1])
    dist.init_process_group("gloo")
    weights = train(out / "ddp", batch_size=4)  # 2 ranks x 4 = the global batch of 8
    torch.save(weights, out / f"rank{dist.get_rank()}.pt")
    close_process_group()  # wait for every rank, then leave (see its docstring)


if __name__ == "__main__":
    main()
