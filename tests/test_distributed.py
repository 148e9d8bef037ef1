"""DDP under torchrun: two CPU processes (gloo) give the weights of one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader

import warmstart as ws
from warmstart.distributed import ShardSampler

SCRIPTS = Path(__file__).parent / "scripts"
sys.path.insert(0, str(SCRIPTS))
from ddp_worker import build  # noqa: E402


def test_torchrun_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "GLOO_SOCKET_IFNAME": "lo"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(SCRIPTS / "ddp_worker.py"), str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "ddp_metrics.json").read_text())
    assert report["world_size"] == 2

    model, data = build()  # one process, batches of 8 = 2 ranks x 2 per batch x accumulate 2
    trainer = ws.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9), max_epochs=3,
                         device="cpu", progress=False)
    history = trainer.fit(DataLoader(data, batch_size=8, shuffle=False), DataLoader(data, batch_size=5))
    ddp_weights = torch.load(tmp_path / "ddp_weights.pt", weights_only=True)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(ddp_weights[name], value, rtol=0, atol=1e-6)

    # metrics are reduced over both ranks, every sample counted once
    expected = trainer.evaluate(DataLoader(data, batch_size=7))
    assert abs(report["evaluate"]["loss"] - expected["loss"]) < 1e-5
    assert report["evaluate"]["accuracy"] == expected["accuracy"]
    assert abs(report["history"][-1]["val_loss"] - history[-1]["val_loss"]) < 1e-5
    assert abs(report["history"][-1]["train_loss"] - history[-1]["train_loss"]) < 1e-5
    # only rank 0 prints and writes
    assert result.stdout.count("epoch 3: train_loss") == 1
    assert (tmp_path / "run" / "last.pt").exists()


def test_shard_sampler_covers_every_sample_once():
    shards = [list(ShardSampler(10, rank, 3)) for rank in range(3)]
    assert sorted(sum(shards, [])) == list(range(10))
    assert [len(s) for s in shards] == [4, 3, 3]
