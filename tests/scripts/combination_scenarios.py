"""Every combination of model and training feature, run whole and interrupted then resumed (tests/test_combinations.py).

Usage: torchrun --nproc_per_node=2 combination_scenarios.py OUT_DIR
Every combination runs under DDP, then under FSDP, in this one launch (starting processes and importing
torch and peft costs more than the runs); rank 0 writes OUT_DIR/results.pt, ``{"ddp": ..., "fsdp": ...}``.
The pytest process calls :func:`run_all` itself for the one-process runs.

Each combination (:func:`run_combination`) trains a tiny model for 2 epochs of 3 optimizer steps on a
global batch of 8 (one process: 8 per batch; two processes: 4 each):

- ``whole``: the uninterrupted run, in ``OUT_DIR/<model>-<feature>/whole``, checkpointing at epoch ends;
- ``resumed``: the same run checkpointing every 5 steps too, stopped by an exception after step 6 (its
  newest checkpoint is step 5's, in the middle of epoch 2), then continued by a fresh trainer with
  ``fit(..., resume="last")``. Its mid-epoch checkpoints must change nothing either.

The results hold every rank's parameters and buffers (sharded parameters gathered) of both, and the
whole run's history; a combination the library refuses holds the refusal (``"refused"``), and one that
fails otherwise its traceback (``"error"``), so that the matrix names every combination that fails.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, WeightedRandomSampler

import warmstart as ws
from warmstart import distributed
from warmstart.data import AugmentConfig, BatchAugment, InMemoryLoader
from warmstart.distill import DistillTrainer, FeatureHint
from warmstart.distributed import close_process_group
from warmstart.errors import ConfigError
from warmstart.finetune import Candidate, FinetuneTrainer, Full, fine_tune
from warmstart.pretrain import ProximalTrainer

MODELS = ("mlp", "cnn")
FEATURES = ("accumulate", "clip", "ema_best", "activation_checkpointing", "proximal", "lora", "linear_probe", "hints",
            "freeze_bn", "threads")
GLOBAL_BATCH, TRAIN_SAMPLES, VAL_SAMPLES = 8, 24, 13  # 3 steps per epoch; 13 validation samples: unequal shards
SAVE_EVERY, INTERRUPT_AT = 5, 6  # checkpoints at steps 3 (epoch end) and 5; stopped after 6: resumed mid-epoch 2
BLOCKS = {"mlp": ["0"], "cnn": ["ConvBlock"]}  # for FSDP's units and activation checkpointing
HINT_LAYER = {"mlp": "0", "cnn": "blocks.0"}


class ConvBlock(nn.Module):
    """Conv, BatchNorm, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))


class CNN(nn.Module):
    """Two conv + BatchNorm blocks on 1x8x8 images, average pooling, a linear head over 3 classes."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(ConvBlock(1, 4), ConvBlock(4, 8, stride=2))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x).mean(dim=(2, 3)))  # (B, 8, 4, 4) -> (B, 8) -> (B, 3)


def build_model(kind: str, seed: int = 0) -> nn.Module:
    """``"mlp"``: 8 -> 16 -> 3; ``"cnn"``: :class:`CNN`. No dropout: each rank draws its own masks, so two
    processes would not compute what one does."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)) if kind == "mlp" else CNN()


def dataset(kind: str, n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    if kind == "mlp":
        x = torch.randn(n, 8, generator=g)
        return TensorDataset(x, (x @ torch.randn(8, 3, generator=g)).argmax(1))
    x = torch.randn(n, 1, 8, 8, generator=g)
    return TensorDataset(x, (x.mean(dim=(1, 2, 3)) > 0).long() + (x[:, 0, 4, 4] > 0.5).long())


def loaders(kind: str, feature: str, world: int) -> tuple[InMemoryLoader, InMemoryLoader]:
    """Shuffled batches of ``GLOBAL_BATCH`` over all ranks (halved, accumulated twice, for ``accumulate``), validation."""
    micro_batch = GLOBAL_BATCH // world // (2 if feature == "accumulate" else 1)
    return (InMemoryLoader(dataset(kind, TRAIN_SAMPLES, 1), batch_size=micro_batch, shuffle=True, seed=3),
            InMemoryLoader(dataset(kind, VAL_SAMPLES, 2), batch_size=5))


def build_trainer(kind: str, feature: str, strategy: str, out_dir: Path, callbacks: list[ws.Callback],
                  save_every: int | None) -> ws.Trainer:
    """The trainer of one combination: the library's trainer for the feature, with the shared settings."""
    options: dict[str, Any] = {"max_epochs": 2, "device": "cpu", "progress": False, "seed": 0, "out_dir": str(out_dir),
                               "save_every": save_every, "strategy": strategy, "fsdp": {"blocks": BLOCKS[kind]}}
    optimizer = {"name": "sgd", "lr": 0.05, "momentum": 0.9}
    net, teacher = build_model(kind), build_model(kind, seed=5)
    # from here each process draws from its own stream, as in a script that seeds every process differently: what
    # the trainers initialise (LoRA's A, the hint adapters) must be rank 0's draw on every rank, as DDP's weights are
    torch.manual_seed(100 + distributed.rank())
    if feature == "accumulate":
        options["accumulate"] = 2
    elif feature == "clip":
        options["grad_clip"] = 0.05  # small enough that every step is clipped
    elif feature == "ema_best":
        callbacks = [*callbacks, ws.EMA(decay=0.8), ws.BestCheckpoint()]
    elif feature == "activation_checkpointing":
        options["activation_checkpointing"] = True
    elif feature == "threads":  # fit and its validation on one intra-op thread, torch's setting given back after
        options["threads"] = 1
    elif feature == "proximal":
        return ProximalTrainer(net, optimizer, lam=2.0, callbacks=callbacks, **options)
    elif feature == "lora":
        return FinetuneTrainer(net, optimizer, method="lora", lora={"r": 2, "dropout": 0.0}, callbacks=callbacks,
                               **options)
    elif feature == "linear_probe":
        return FinetuneTrainer(net, optimizer, method="linear_probe", callbacks=callbacks, **options)
    elif feature == "freeze_bn":  # every layer trains, BatchNorm in eval mode with its initial statistics
        return FinetuneTrainer(net, optimizer, method="full", freeze_bn=True, callbacks=callbacks, **options)
    elif feature == "hints":
        hint = FeatureHint(HINT_LAYER[kind], HINT_LAYER[kind])
        return DistillTrainer(net, teacher, optimizer, temperature=2.0, alpha=0.5, hints=[hint], callbacks=callbacks,
                              **options)
    return ws.Trainer(net, optimizer, callbacks=callbacks, **options)


class Interrupt(Exception):
    """What :class:`InterruptAt` raises: a run that dies mid-epoch."""


class InterruptAt(ws.Callback):
    """Raise :class:`Interrupt` after optimizer step ``step`` (on every rank, as a crash of the job would stop them)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_step_end(self, trainer: ws.Trainer) -> None:
        if trainer.global_step == self.step:
            raise Interrupt


def weights(trainer: ws.Trainer | nn.Module) -> list[dict[str, torch.Tensor]]:
    """Every rank's parameters and buffers (sharded parameters gathered; hint adapters too); every rank must call it."""
    state = dict(getattr(trainer, "unwrapped_model", trainer).state_dict())
    state.update({f"hint_adapters.{k}": v for k, v in getattr(trainer, "adapters", nn.Module()).state_dict().items()})
    full = {name: (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().cpu().clone()
            for name, t in state.items()}
    return distributed.gather_objects(full)


def run_combination(kind: str, feature: str, strategy: str, world: int, out: Path) -> dict[str, Any]:
    """Train the combination whole, and interrupted then resumed: every rank's weights of both and the history."""
    folder = out / f"{kind}-{feature}"
    train, val = loaders(kind, feature, world)
    try:
        whole = build_trainer(kind, feature, strategy, folder / "whole", [], save_every=None)
        whole.fit(train, val)
        cut = build_trainer(kind, feature, strategy, folder / "cut", [InterruptAt(INTERRUPT_AT)], SAVE_EVERY)
        try:
            cut.fit(train, val)
        except Interrupt:
            pass
        resumed = build_trainer(kind, feature, strategy, folder / "cut", [], SAVE_EVERY)
        resumed.fit(train, val, resume="last")
    except ConfigError as err:
        return {"refused": err}
    except Exception:  # noqa: BLE001  (every rank fails alike: the next combination can still run)
        return {"error": traceback.format_exc()}
    return {"whole": weights(whole), "resumed": weights(resumed), "history": whole.history,
            "resumed_history": resumed.history, "out_dir": folder / "whole", "resumed_dir": folder / "cut"}


# fine_tune's choice by validation (warmstart.selection) x what its folds must keep: the loader's input transform (a
# random step and a fixed one), a DataLoader's weighted sampler, a validation loader that is a plain list, soft targets;
# and the choice averaged with the runner-up (ensemble=True), killed as that second member starts training
SELECTION_CASES = ("transform", "sampler", "list_val", "soft_targets", "ensemble")
SELECTION_SAMPLES = 40
KILL_AT = {"list_val": 2, "ensemble": 4}  # killed as this training starts (default 4: 3 of the 2 x 5 fold trials recorded; on the
# validation loader 1 of the 2 trials)


class Standardise(nn.Module):
    """A fixed input transform: the CNN is trained on its outputs, so folds scored without it would score noise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - 0.5) / 0.25


class KillAt(ws.Callback):
    """Count the trainings started (trials and the final run) and raise :class:`Interrupt` when the ``at``-th starts."""

    def __init__(self, at: int | None = None):
        self.at, self.started = at, 0

    def on_fit_start(self, trainer: ws.Trainer) -> None:
        self.started += 1
        if self.started == self.at:
            raise Interrupt


def separable(n: int, seed: int) -> TensorDataset:
    """1x8x8 images whose brightness says the class (of 3): a task a few steps of training learn."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    return TensorDataset(torch.randn(n, 1, 8, 8, generator=g) + (y.float() - 1).view(-1, 1, 1, 1), y)


def selection_data(case: str, world: int) -> tuple[Any, Any]:
    """The training data of a case (a global batch of 8 over the ranks) and its validation loader (``None``: folds)."""
    data = separable(SELECTION_SAMPLES, 7)
    x, y = data.tensors
    batch = 8 // world
    if case == "transform":
        fixed = nn.Sequential(BatchAugment(AugmentConfig(translate=0.1)), Standardise())
        return InMemoryLoader(x * 0.25 + 0.5, y, batch_size=batch, shuffle=True, seed=3, transform=fixed), None
    if case == "sampler":
        weights = torch.where(y == 0, 3.0, 1.0)
        sampler = WeightedRandomSampler(weights, SELECTION_SAMPLES, generator=torch.Generator().manual_seed(3))
        return DataLoader(data, batch_size=batch, sampler=sampler), None
    if case in ("list_val", "ensemble"):
        held = separable(24, 8)
        return (InMemoryLoader(data, batch_size=batch, shuffle=True, seed=3),
                [(held.tensors[0][i:i + 6], held.tensors[1][i:i + 6]) for i in range(0, 24, 6)])
    soft = 0.8 * nn.functional.one_hot(y, 3).float() + 0.2 / 3
    return InMemoryLoader(x, soft, batch_size=batch, shuffle=True, seed=3), None


def run_selection(case: str, world: int, out: Path) -> dict[str, Any]:
    """fine_tune with a choice of two candidates into an out_dir, whole, and killed during its trials then resumed."""
    candidates = [Candidate("full", 0, Full(backbone_lr_mult=1.0)), Candidate("slow", 0, Full(backbone_lr_mult=0.1))]

    def call(folder: Path, killer: KillAt, resume: str | None = None) -> Any:
        train, val = selection_data(case, world)
        torch.manual_seed(0)
        return fine_tune(CNN(), train, val, epochs=10, candidates=candidates, out_dir=folder, resume=resume,
                         callbacks=[killer], ensemble=case == "ensemble" or None, optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9}, device="cpu",
                         progress=False, seed=0, selection={"max_detectable": None, "min_trial_steps": 1})

    folder = out / f"selection-{case}"
    try:
        whole = call(folder / "whole", KillAt())
        try:
            call(folder / "cut", KillAt(KILL_AT.get(case, 4)))
        except Interrupt:
            pass
        counter = KillAt()
        resumed = call(folder / "cut", counter, resume="last")
    except ConfigError as err:
        return {"refused": err}
    except Exception:  # noqa: BLE001  (every rank fails alike: the next case can still run)
        return {"error": traceback.format_exc()}
    second = {} if not whole.members else {"second": weights(whole.model.members[1]),
                                           "resumed_second": weights(resumed.model.members[1])}
    return {**second, "whole": weights(whole.trainer), "resumed": weights(resumed.trainer), "selection": whole.selection,
            "resumed_selection": resumed.selection,
            "trainings_after_resume": counter.started, "killed_at": KILL_AT.get(case, 4),
            "ranks_selections": distributed.gather_objects(whole.selection.to_dict()), "out_dir": folder}


def run_all(strategy: str, world: int, out: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """:func:`run_combination` for every model and feature; under one process and DDP :func:`run_selection` too."""
    results = {(kind, feature): run_combination(kind, feature, strategy, world, out)
               for kind in MODELS for feature in FEATURES}
    if strategy != "fsdp":
        results.update({("selection", case): run_selection(case, world, out) for case in SELECTION_CASES})
    return results


# ranks launched with settings that differ: each must fail on every rank at once, naming what differs (issue 37)
MISMATCHES = ("lr", "width", "accumulate", "max_epochs", "strategy", "batches")


def run_mismatch(case: str) -> dict[str, Any]:
    """Train with one setting that differs on rank 1; the ConfigError each rank raised and how long it took."""
    import time

    other = distributed.rank() == 1
    options: dict[str, Any] = {"max_epochs": 1, "device": "cpu", "progress": False, "seed": 0, "strategy": "ddp"}
    if case == "accumulate":
        options["accumulate"] = 2 if other else 1
    elif case == "max_epochs":
        options["max_epochs"] = 2 if other else 1
    elif case == "strategy":
        options.update(strategy="fsdp" if other else "ddp", fsdp={"blocks": ["0"]})
    torch.manual_seed(0)
    hidden = 32 if case == "width" and other else 16
    net = nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 3))
    optimizer = {"name": "sgd", "lr": 0.2 if case == "lr" and other else 0.1}
    data = dataset("mlp", 16 if case == "batches" and other else TRAIN_SAMPLES, 1)
    started = time.perf_counter()
    try:
        ws.Trainer(net, optimizer, **options).fit(InMemoryLoader(data, batch_size=4, shuffle=True, seed=3))
    except ConfigError as err:
        return {"error": str(err), "seconds": time.perf_counter() - started}
    return {"error": None, "seconds": time.perf_counter() - started}


def main() -> None:
    out = Path(sys.argv[1])
    dist.init_process_group("gloo")
    results = {strategy: run_all(strategy, dist.get_world_size(), out / strategy) for strategy in ("ddp", "fsdp")}
    results["mismatch"] = {case: distributed.gather_objects(run_mismatch(case)) for case in MISMATCHES}
    if dist.get_rank() == 0:
        torch.save(results, out / "results.pt")
    close_process_group()  # wait for every rank, then leave (see its docstring)


if __name__ == "__main__":
    main()
