"""Train a small dropout MLP on shuffled data; used by the resume tests as a real, killable process.

Usage: python resume_worker.py OUT_DIR [--resume] [--pause-at-step N] [--loader dataloader|generator]
With --pause-at-step, the process prints PAUSED and sleeps at that step so the test can SIGKILL it.
It checkpoints every 3 steps and logs every 2; ``--loader generator`` shuffles with the loader's own generator.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import warmstart as ws


class PauseAt(ws.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_step_end(self, trainer: ws.Trainer) -> None:
        if trainer.global_step == self.step:
            print("PAUSED", flush=True)
            time.sleep(600)


class ReportStart(ws.Callback):
    def on_fit_start(self, trainer: ws.Trainer) -> None:
        print("START", trainer.global_step, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--pause-at-step", type=int)
    parser.add_argument("--loader", default="dataloader")
    args = parser.parse_args()

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(96, 12, generator=g)
    y = (x[:, :3].sum(1) > 0).long()
    generator = torch.Generator().manual_seed(7) if args.loader == "generator" else None
    loader = DataLoader(TensorDataset(x, y), batch_size=12, shuffle=True, generator=generator)  # 8 steps per epoch
    model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 2))
    callbacks = [ws.EMA(decay=0.9), ReportStart()] + ([PauseAt(args.pause_at_step)] if args.pause_at_step else [])
    trainer = ws.Trainer(model, {"name": "adamw", "lr": 0.01}, scheduler={"name": "cosine", "warmup_steps": 4},
                         max_epochs=4, out_dir=str(args.out_dir), seed=3, progress=False, callbacks=callbacks,
                         save_every=3, log_every=2)
    trainer.fit(loader, loader, resume="last" if args.resume else None)
    print("DONE", trainer.global_step, flush=True)


if __name__ == "__main__":
    sys.exit(main())
