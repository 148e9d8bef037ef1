"""Multi-process data-parallel training: the same script runs alone or under ``torchrun``.

:class:`warmstart.Trainer` notices ``torchrun`` (its ``WORLD_SIZE``/``RANK`` variables), joins the
process group (NCCL on GPUs, Gloo on the CPU), wraps the model in ``DistributedDataParallel`` and
gives each process its share of every epoch: ``InMemoryLoader`` shards itself and ``DataLoader`` s
get a ``DistributedSampler``. Logged losses and ``evaluate`` metrics are reduced over all
processes, and only rank 0 prints and writes files, so nothing in this script depends on the
number of processes except the global batch (``--batch-size`` per process x processes).

Run::

    python examples/07_torchrun_ddp.py                                   # one process, about a minute
    torchrun --standalone --nproc_per_node=2 examples/07_torchrun_ddp.py # two processes (CPU: Gloo)
    torchrun --standalone --nproc_per_node=2 examples/07_torchrun_ddp.py --dry-run
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import warmstart as ws
from warmstart import distributed
from warmstart.data import InMemoryLoader, fake_splits


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64, help="per process")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=None, help="checkpoints and logs (default: runs/07_torchrun_ddp; a dry run: a temporary folder)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier run in the output folder (refused otherwise)")
    parser.add_argument("--dry-run", action="store_true", help="a few steps on fake data, to check the script runs")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dry_run and args.out_dir is None and not distributed.launched_by_torchrun():  # a dry run leaves nothing behind
        with tempfile.TemporaryDirectory() as folder:
            args.out_dir = Path(folder)
            return run(args)
    return run(args)


def run(args: argparse.Namespace) -> int:
    # one folder for all ranks (a random temporary name would differ between processes); only rank 0 writes
    out_dir = args.out_dir or Path("runs/07_torchrun_ddp")
    if args.dry_run:
        data, args.epochs, args.batch_size = fake_splits(64, 32), 1, 16
    else:
        data = ws.data.mnist5k()

    ws.seed_everything(args.seed)  # the same initial weights everywhere (DDP also broadcasts rank 0's)
    model = ws.models.small_cnn(width=16)
    trainer = ws.Trainer(model, {"name": "adamw", "lr": 3e-3, "weight_decay": 0.01}, scheduler={"name": "cosine"},
                         max_epochs=args.epochs, seed=args.seed, out_dir=str(out_dir), log_every=10,
                         overwrite=args.overwrite)
    trainer.fit(InMemoryLoader(data.train, batch_size=args.batch_size, shuffle=True, seed=args.seed),
                InMemoryLoader(data.test, batch_size=250))
    metrics = trainer.evaluate(InMemoryLoader(data.test, batch_size=250))  # every rank scores its share
    if distributed.is_main_process():
        print(f"{distributed.world_size()} process(es), global batch {args.batch_size * distributed.world_size()}: "
              f"test accuracy {metrics['accuracy']:.1%}; weights in {out_dir / 'last.safetensors'}")
    distributed.close_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
