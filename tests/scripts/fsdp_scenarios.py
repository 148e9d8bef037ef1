"""One rank of the FSDP test: the Trainer and the library's trainers under strategy="fsdp", results saved by rank 0.

Usage: torchrun --nproc_per_node=2 fsdp_scenarios.py OUT_DIR
OUT_DIR/one must hold a sharded checkpoint written by one process (epoch 1 of ``trainer(...)``).
Scenarios (each a function below; the references are in tests/test_fsdp.py):
- full: 2 epochs, accumulation 2 and clipping, validation on unequal shards; weights in last.safetensors;
- checkpointed: the same with activation checkpointing;
- cut_epoch: the same, stopped in epoch 2 (its last.dcp is epoch 1's end: resumed on 1 process by the test);
- cut_step: checkpoints every 3 steps, stopped in epoch 2 (last checkpoint: step 6), resumed here on 2 processes;
- from_one: OUT_DIR/one (1 process) resumed here on 2;
- proximal: ProximalTrainer, its anchor sharded; the penalty and its gradient against the gathered weights;
- finetune / gradual / distill: FinetuneTrainer (partial freezing with per-group rates; gradual unfreezing) and
  DistillTrainer (teacher replicated);
- bf16: mixed precision (bf16 parameters in compute, fp32 gradient reduction);
- callbacks: EMA and BestCheckpoint, whose files are gathered to rank 0.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import warmstart as ws
from warmstart.distill import DistillTrainer
from warmstart.distributed import close_process_group
from warmstart.finetune import FinetuneTrainer
from warmstart.pretrain import ProximalTrainer
from warmstart.proximal import Anchor, proximal_penalty


class Block(nn.Module):
    """A residual block, sized so that some shards are uneven (13 rows over 2 ranks)."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 13)
        self.fc2 = nn.Linear(13, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.tanh(self.fc1(self.norm(x))))


class Net(nn.Module):
    def __init__(self, width: int = 10, depth: int = 3, classes: int = 3):
        super().__init__()
        self.embed = nn.Linear(6, width)
        self.layers = nn.ModuleList([Block(width) for _ in range(depth)])
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def data(n: int = 32) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 6, generator=g)
    return TensorDataset(x, (x[:, 0] - x[:, 1] > 0).long() + (x[:, 2] > 0.5).long())


def model(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net()


def loaders(world: int) -> tuple[DataLoader, DataLoader]:
    """Micro-batches of 4 samples over all ranks (2 per rank on 2 ranks), x 2 accumulated: 4 steps per epoch."""
    return DataLoader(data(), batch_size=4 // world, shuffle=False), DataLoader(data(21), batch_size=5)


def trainer(out_dir: Path | None, callbacks=(), **options) -> ws.Trainer:
    """The run every scenario and reference starts from (the options override)."""
    settings = {"max_epochs": 2, "accumulate": 2, "grad_clip": 0.5, "device": "cpu", "progress": False, "seed": 0,
                "out_dir": None if out_dir is None else str(out_dir), **options}
    net = model()
    return ws.Trainer(net, {"name": "adamw", "lr": 0.02, "weight_decay": 0.01}, callbacks=list(callbacks), **settings)


class Interrupt(Exception):
    pass


class InterruptAt(ws.Callback):
    """Stop the run with an exception after optimizer step ``step`` on every rank (as a crash would)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_step_end(self, trainer: ws.Trainer) -> None:
        if trainer.global_step == self.step:
            raise Interrupt


class KillAt(ws.Callback):
    """SIGKILL this process after optimizer step ``step`` (every rank does; torchrun then ends the rest)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_step_end(self, trainer: ws.Trainer) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def fit(run: ws.Trainer, world: int, resume: str | None = None) -> ws.Trainer:
    train, val = loaders(world)
    try:
        run.fit(train, val, resume=resume)
    except Interrupt:
        pass
    return run


def gathered(run: ws.Trainer) -> dict[str, torch.Tensor]:
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
    )

    return get_model_state_dict(run.unwrapped_model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def scenarios(out: Path) -> dict:
    results = {}
    full = fit(trainer(out / "full", strategy="fsdp", log_every=3), 2)
    results["full"] = {"history": full.history, "evaluate": full.evaluate(DataLoader(data(5), batch_size=2)),
                       "shard_numel": {n: p.to_local().numel() for n, p in full.unwrapped_model.named_parameters()}}
    results["checkpointed"] = gathered(fit(trainer(None, strategy="fsdp", activation_checkpointing=True), 2))
    fit(trainer(out / "cut_epoch", [InterruptAt(6)], strategy="fsdp"), 2)  # 4 steps per epoch: stops in epoch 2
    fit(trainer(out / "cut_step", [InterruptAt(7)], strategy="fsdp", save_every=3), 2)  # last: step 6, mid-epoch
    resumed = trainer(out / "cut_step_resumed", strategy="fsdp", save_every=3)  # cut_step/ stays mid-epoch
    results["cut_step"] = gathered(fit(resumed, 2, resume=str(out / "cut_step" / "last.dcp")))
    results["from_one"] = gathered(fit(trainer(out / "one", strategy="fsdp"), 2, resume="last"))
    results["proximal"] = proximal(out)
    results["finetune"] = finetune()
    results["gradual"] = gathered(fit(gradual_trainer(model(), strategy="fsdp"), 2))
    results["distill"] = distill()
    results["bf16"] = fit(trainer(None, strategy="fsdp", precision="bf16", max_epochs=1), 2).history
    fit(trainer(out / "callbacks", callbacks(), strategy="fsdp", max_epochs=1), 2)
    return results


def callbacks() -> list[ws.Callback]:
    """An EMA that validates and saves its (sharded) average, and the best weights: both gathered to rank 0."""
    return [ws.EMA(decay=0.9), ws.BestCheckpoint()]


def proximal(out: Path) -> dict:
    net = model()
    run = ProximalTrainer(net, {"name": "sgd", "lr": 0.05, "momentum": 0.9}, lam=2.0, max_epochs=1, device="cpu",
                          progress=False, seed=0, strategy="fsdp", accumulate=2)
    fit(run, 2)
    anchor = run.anchor.tensors
    weights, w0 = gathered(run), {n: t.full_tensor() for n, t in anchor.items()}
    penalty = proximal_penalty(run.unwrapped_model, run.anchor)
    for p in run.unwrapped_model.parameters():  # the penalty's gradient alone: grad = w - w0
        p.grad = torch.zeros_like(p)
    run.proximal.add_gradient()
    gradient = {n: p.grad.full_tensor() for n, p in run.unwrapped_model.named_parameters()}
    given = Anchor(w0).shard_like(run.unwrapped_model).tensors  # an anchor given whole is scattered like the weights
    return {"given_anchor": {n: t.full_tensor() for n, t in given.items()},
            "given_is_sharded": all(type(t).__name__ == "DTensor" for t in given.values()),"weights": weights, "anchor": w0, "penalty": penalty, "gradient": gradient, "history": run.history,
            "anchor_local_numel": sum(t.to_local().numel() for t in anchor.values()),
            "anchor_is_sharded": all(type(t).__name__ == "DTensor" for t in anchor.values())}


def finetune_trainer(net: nn.Module, **options) -> FinetuneTrainer:
    """Two of four backbone groups frozen, the others at their own rates (the fine-tuning ``method``)."""
    return FinetuneTrainer(net, {"name": "sgd", "lr": 0.1, "momentum": 0.9}, method={"name": "partial", "k": 2, "layer_decay": 0.5},
                           groups=["embed", "layers.0", "layers.1", "layers.2"], head="head", max_epochs=1,
                           device="cpu", progress=False, seed=0, accumulate=2, **options)


def gradual_trainer(net: nn.Module, **options) -> FinetuneTrainer:
    """Gradual unfreezing: the head for an epoch, then one more backbone group per epoch (optimizer groups added)."""
    return FinetuneTrainer(net, {"name": "adam", "lr": 0.01}, method={"name": "gradual"},
                           groups=["embed", "layers.0", "layers.1", "layers.2"], head="head", max_epochs=2,
                           device="cpu", progress=False, seed=0, accumulate=2, **options)


def finetune() -> dict:
    run = fit(finetune_trainer(model(), strategy="fsdp"), 2)
    return {"weights": gathered(run), "groups": [g.get("name") for g in run.optimizer.param_groups]}


def distill() -> dict:
    run = DistillTrainer(model(seed=6), model(seed=5), {"name": "adam", "lr": 1e-2}, temperature=2.0, alpha=0.5,
                         max_epochs=1, device="cpu", progress=False, seed=0, accumulate=2, strategy="fsdp")
    fit(run, 2)
    return {"weights": gathered(run)}


def main() -> None:
    out, step = Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "scenarios"
    dist.init_process_group("gloo")
    if step == "kill":  # killed at step 7; the checkpoint of step 6 (mid-epoch) is what survives
        fit(trainer(out / "killed", [KillAt(7)], strategy="fsdp", save_every=3), 2)
    elif step == "resume_killed":
        weights = gathered(fit(trainer(out / "killed", strategy="fsdp", save_every=3), 2, resume="last"))
        if dist.get_rank() == 0:
            torch.save(weights, out / "killed_resumed.pt")
    else:
        results = scenarios(out)
        if dist.get_rank() == 0:
            torch.save(results, out / "results.pt")
    close_process_group()  # wait for every rank, then leave (see its docstring)


if __name__ == "__main__":
    main()
