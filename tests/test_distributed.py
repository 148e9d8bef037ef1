"""DDP under torchrun: two CPU processes (gloo) give the weights of one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

import warmstart as ws
from warmstart.data import InMemoryLoader
from warmstart.distill import DistillTrainer
from warmstart.distributed import ShardSampler
from warmstart.finetune import FinetuneTrainer

SCRIPTS = Path(__file__).parent / "scripts"
sys.path.insert(0, str(SCRIPTS))
import ddp_scenarios as scenarios  # noqa: E402
from ddp_worker import build  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "GLOO_SOCKET_IFNAME": "lo"}


def _torchrun(script: str, out: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(SCRIPTS / script),
           str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_torchrun_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    result = _torchrun("ddp_worker.py", tmp_path)
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


def _close(a: dict, b: dict, atol: float = 1e-6) -> None:
    for name, value in a.items():
        torch.testing.assert_close(value, b[name], rtol=0, atol=atol, msg=name)


def test_trainers_and_loaders_under_torchrun_match_one_process(tmp_path):
    _torchrun("ddp_scenarios.py", tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for name in ("stream", "finetune", "distill", "batches"):  # the replicas stay identical
        _close(ranks[0][name]["weights"], ranks[1][name]["weights"], atol=0)

    # a loader without len(): the short last window all-reduces and is divided by its own length
    net = scenarios.model()
    ws.Trainer(net, torch.optim.SGD(net.parameters(), lr=0.3), accumulate=4, max_epochs=2, device="cpu",
               progress=False, seed=0).fit(DataLoader(scenarios.data(), batch_size=4))
    _close(ranks[0]["stream"]["weights"], net.state_dict())

    net = scenarios.model()  # FinetuneTrainer: gradual unfreezing re-wraps DDP; the proximal term is added after the all-reduce
    FinetuneTrainer(net, {"name": "sgd", "lr": 0.2, "momentum": 0.9}, method={"name": "gradual"}, groups=["0", "2"],
                    proximal=2.0, max_epochs=3, device="cpu", progress=False, seed=0).fit(
        DataLoader(scenarios.data(), batch_size=4, shuffle=False))
    _close(ranks[0]["finetune"]["weights"], net.state_dict())

    student = scenarios.model(seed=6)  # DistillTrainer with a cache that rank 0 built and both ranks read
    DistillTrainer(student, scenarios.model(seed=5), {"name": "adam", "lr": 1e-2}, temperature=2.0, alpha=0.5,
                   cache_teacher=True, max_epochs=2, device="cpu", progress=False, seed=0).fit(
        InMemoryLoader(scenarios.data(), batch_size=8, shuffle=True, seed=3))
    _close(ranks[0]["distill"]["weights"], student.state_dict(), atol=1e-5)
    assert ranks[0]["distill"]["cache_rows"] == ranks[1]["distill"]["cache_rows"] == 40
    assert (tmp_path / "distill" / "teacher_logits.npy").is_file()

    expected = ws.Trainer(scenarios.model(), device="cpu", progress=False).evaluate(
        InMemoryLoader(scenarios.data(5), batch_size=2))  # an InMemoryLoader's 5 samples count once, not 6
    for rank in ranks:
        assert rank["evaluate"]["metrics"]["loss"] == pytest.approx(expected["loss"], rel=1e-6)
        assert rank["evaluate"]["metrics"]["accuracy"] == pytest.approx(expected["accuracy"])

    # each rank draws its own stream (dropout, augmentation), rank 0 the run's seed as one process does
    draws = ws.Callback()
    draws.on_fit_start = lambda trainer: setattr(draws, "draws", torch.rand(4))
    ws.Trainer(scenarios.model(), max_steps=1, device="cpu", progress=False, seed=11, callbacks=[draws]).fit(
        DataLoader(scenarios.data(), batch_size=4))
    assert torch.equal(ranks[0]["streams"]["draws"], draws.draws)
    assert not torch.equal(ranks[0]["streams"]["draws"], ranks[1]["streams"]["draws"])

    # BatchNorm: both ranks end with the same statistics, and the reported validation is the saved weights'
    _close(ranks[0]["batchnorm"]["buffers"], ranks[1]["batchnorm"]["buffers"], atol=0)
    saved = scenarios.batchnorm_model()
    saved.load_state_dict(ws.load_weights(tmp_path / "batchnorm" / "last.safetensors")[0])
    measured = ws.evaluate(saved, DataLoader(scenarios.data(), batch_size=8))
    reported = ranks[0]["batchnorm"]["history"][-1]
    assert measured["loss"] == pytest.approx(reported["val_loss"], rel=1e-6)
    assert measured["accuracy"] == pytest.approx(reported["val_accuracy"])
    assert all("holds an earlier run" in (rank["refused"]["refused"] or "") for rank in ranks)
    # a label out of range on one rank: both ranks raise the DataError at the read after step 5 (clamped until then,
    # so the rank with the label does not fail alone and leave the other waiting in an all-reduce)
    assert [rank["bad_label"]["steps"] for rank in ranks] == [5, 5]
    assert all("a batch has label 5" in (rank["bad_label"]["error"] or "") for rank in ranks)

    # issue 23 (13): a plain list of batches is sharded (batch i on rank i % 2), not trained whole on every rank:
    # 2 ranks x batches of 4 give one process's batches of 8
    net = scenarios.model()
    ws.Trainer(net, torch.optim.SGD(net.parameters(), lr=0.3), max_epochs=2, device="cpu", progress=False,
               seed=0).fit(DataLoader(scenarios.data(), batch_size=8))
    _close(ranks[0]["batches"]["weights"], net.state_dict())
    assert [rank["batches"]["steps"] for rank in ranks] == [10, 10]  # 5 of the 10 batches per rank and epoch
    assert [rank["batches"]["uneven_steps"] for rank in ranks] == [3, 3]  # 5 batches: the short share wraps round
    assert len(ranks[0]["batches"]["warnings"]) == 1 and "1 batch(es) train twice" in ranks[0]["batches"]["warnings"][0]
    assert ranks[1]["batches"]["warnings"] == []


def test_shard_batches_deals_batch_i_to_rank_i_mod_world_size():
    from warmstart.distributed._process_group import shard_batches

    batches = list(range(7))
    with pytest.warns(UserWarning, match="7 batches does not divide among 3 ranks.*2 batch\\(es\\) train twice"):
        shares = [shard_batches(batches, r, 3, train=True) for r in range(3)]
    assert shares == [[0, 3, 6], [1, 4, 0], [2, 5, 1]]
    assert [shard_batches(batches, r, 3, train=False) for r in range(3)] == [[0, 3, 6], [1, 4], [2, 5]]
    assert shard_batches([0], 1, 2, train=False) == [0]  # too few to share: whole on every rank (the means agree)
