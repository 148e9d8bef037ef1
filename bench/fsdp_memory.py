"""Per-rank memory of the training state, DDP against FSDP: parameter, gradient and AdamW-state tensor bytes.

A transformer-like stack (residual MLP blocks of width 512, 4x hidden) trains a few AdamW steps with
``strategy="ddp"`` and then ``strategy="fsdp"``; each rank counts the bytes of the storage behind its
parameters, its gradients (just before the optimizer step) and its optimizer state (after the step).
FSDP's figures include its shard padding (each parameter's rows padded to a multiple of N).

    torchrun --standalone --nproc_per_node=2 bench/fsdp_memory.py            # CPU, gloo
    torchrun --standalone --nproc_per_node=2 bench/fsdp_memory.py --device cuda

Not counted: activations (the same per rank for both), DDP's gradient buckets (another copy of the
gradients, about 4P bytes), and what FSDP gathers for one block at a time (that block's full
parameters and gradients, plus the root's while the step runs).
"""

from __future__ import annotations

import argparse

import torch
import torch.distributed as dist
from torch import nn

import warmstart as ws
from warmstart.distributed import close_process_group


class Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, 4 * width)
        self.down = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.relu(self.up(self.norm(x))))


def model(width: int, depth: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, width), *[Block(width) for _ in range(depth)], nn.Linear(width, 10))


def storage_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (a DTensor counts its local shard, padding included)."""
    seen, total = set(), 0
    for t in tensors:
        local = t.to_local() if hasattr(t, "to_local") else t
        storage = local.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


class Measured(ws.Trainer):
    """A Trainer that counts its gradient bytes just before each optimizer step (they are freed after it)."""

    grad_bytes = 0

    def on_before_optimizer_step(self) -> None:
        self.grad_bytes = storage_bytes([p.grad for p in self.unwrapped_model.parameters() if p.grad is not None])


def measure(strategy: str, width: int, depth: int, device: str) -> dict[str, int]:
    net = model(width, depth)
    trainer = Measured(net, {"name": "adamw", "lr": 1e-3}, strategy=strategy, device=device, max_steps=2,
                       progress=False, seed=0)
    g = torch.Generator().manual_seed(dist.get_rank())
    trainer.fit([(torch.randn(8, 64, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(2)])
    state = [t for s in trainer.optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
    return {"params": storage_bytes(list(trainer.unwrapped_model.parameters())), "grads": trainer.grad_bytes,
            "optimizer": storage_bytes(state), "numel": sum(p.numel() for p in trainer.unwrapped_model.parameters())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    dist.init_process_group("nccl" if args.device == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = f"cuda:{rank}" if args.device == "cuda" else "cpu"
    rows = {strategy: measure(strategy, args.width, args.depth, device) for strategy in ("ddp", "fsdp")}
    per_rank = [None] * world
    dist.all_gather_object(per_rank, rows)
    if rank == 0:
        report(per_rank, args, world)
    close_process_group()  # wait for every rank, then leave (see its docstring)


def report(per_rank: list[dict[str, dict[str, int]]], args: argparse.Namespace, world: int) -> None:
    mib = 2**20
    numel = per_rank[0]["ddp"]["numel"]
    print(f"model: {args.depth} residual MLP blocks of width {args.width}, P = {numel:,} parameters (fp32), AdamW; "
          f"{world} ranks, device {args.device}\n")
    print("| strategy | rank | parameters (MiB) | gradients (MiB) | AdamW state (MiB) | total (MiB) | vs DDP |")
    print("|---|---|---|---|---|---|---|")
    for strategy in ("ddp", "fsdp"):
        for rank, rows in enumerate(per_rank):
            row, ddp = rows[strategy], rows["ddp"]
            total = row["params"] + row["grads"] + row["optimizer"]
            ddp_total = ddp["params"] + ddp["grads"] + ddp["optimizer"]
            print(f"| {strategy} | {rank} | {row['params'] / mib:.2f} | {row['grads'] / mib:.2f} | "
                  f"{row['optimizer'] / mib:.2f} | {total / mib:.2f} | {total / ddp_total:.3f} |")
    print(f"\nper rank, fp32 weights with AdamW (4 bytes each for the weight, its gradient and two moments): "
          f"DDP 16P bytes = {16 * numel / mib:.1f} MiB on every rank; FSDP on N ranks about 16P/N "
          f"(= {16 * numel / world / mib:.1f} MiB for N={world}), plus the padding of each parameter's rows to a "
          "multiple of N, plus one block's gathered parameters and gradients while it runs.")


if __name__ == "__main__":
    main()
