"""strategy="fsdp": two CPU processes (gloo) train as one, sharded checkpoints resume at another world size, bad input."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch import nn

import warmstart as ws
from warmstart.distill import DistillTrainer
from warmstart.errors import CheckpointError, ConfigError
from warmstart.pretrain import ProximalTrainer

SCRIPTS = Path(__file__).parent / "scripts"
sys.path.insert(0, str(SCRIPTS))
import fsdp_scenarios as scenarios

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "GLOO_SOCKET_IFNAME": "lo"}
SAME_WORLD = 0.0  # resuming at the same world size is bit-exact
OTHER_WORLD = 1e-5  # another world size sums the gradient shards in another order: float32 rounding only


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """One process writes an epoch-1 checkpoint, then one torchrun of 2 processes runs every scenario."""
    out = tmp_path_factory.mktemp("fsdp")
    with pytest.warns(UserWarning, match="single shard"):
        _fit(scenarios.trainer(out / "one", strategy="fsdp", max_epochs=1))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(SCRIPTS / "fsdp_scenarios.py"), str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return {"out": out, **torch.load(out / "results.pt", weights_only=False)}


@pytest.fixture(scope="module", autouse=True)
def _leave_no_process_group():
    yield
    if dist.is_initialized():  # the single-shard runs made a process group of this one process
        dist.destroy_process_group()


def _fit(trainer: ws.Trainer, resume: str | None = None) -> ws.Trainer:
    train, val = scenarios.loaders(1)
    trainer.fit(train, val, resume=resume)
    return trainer


def _weights(trainer: ws.Trainer) -> dict[str, torch.Tensor]:
    return {n: t.full_tensor() if hasattr(t, "full_tensor") else t for n, t in trainer.unwrapped_model.state_dict().items()}


def _close(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for name, value in a.items():
        torch.testing.assert_close(value, b[name], rtol=0, atol=atol, msg=name)


@pytest.mark.slow  # 21 s; test_a_mid_epoch_checkpoint_resumes_exactly_on_the_same_world_size covers the files
def test_a_two_process_run_killed_with_sigkill_mid_epoch_resumes_exactly(run, tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                str(SCRIPTS / "fsdp_scenarios.py"), str(tmp_path)]
    killed = subprocess.run([*torchrun, "kill"], capture_output=True, text=True, env=ENV, timeout=300, check=False)
    assert killed.returncode != 0 and (tmp_path / "killed" / "last.dcp").is_dir()  # no graceful exit: a real kill
    resumed = subprocess.run([*torchrun, "resume_killed"], capture_output=True, text=True, env=ENV, timeout=300,
                             check=False)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-5000:]
    _close(torch.load(tmp_path / "killed_resumed.pt", weights_only=True),
           load_file(run["out"] / "full" / "last.safetensors"), SAME_WORLD)


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    """The same run on one process, no FSDP: micro-batches of 4, accumulated 2."""
    return _weights(_fit(scenarios.trainer(None)))


def test_two_process_fsdp_matches_one_process_with_accumulation_and_clipping(run, reference):
    _close(load_file(run["out"] / "full" / "last.safetensors"), reference, OTHER_WORLD)  # gathered on rank 0
    shards = run["full"]["shard_numel"]
    assert shards["layers.0.fc1.weight"] == 7 * 10 and shards["head.weight"] == 2 * 10  # 13 and 3 rows over 2 ranks
    # validation ran in lockstep over unequal shards (21 samples in batches of 5): every sample counted once
    assert run["full"]["history"][-1]["val_loss"] == pytest.approx(_fit(scenarios.trainer(None)).history[-1]["val_loss"],
                                                                   abs=1e-5)


def test_activation_checkpointing_under_fsdp_changes_nothing(run):
    _close(run["checkpointed"], load_file(run["out"] / "full" / "last.safetensors"), SAME_WORLD)


def test_a_mid_epoch_checkpoint_resumes_exactly_on_the_same_world_size(run):
    _close(run["cut_step"], load_file(run["out"] / "full" / "last.safetensors"), SAME_WORLD)


def test_a_checkpoint_of_two_processes_resumes_on_one_and_of_one_on_two(run, reference):
    cut = run["out"] / "cut_epoch"
    assert sorted(p.name for p in cut.iterdir() if "dcp" in p.name) == ["last.dcp"]  # no temp folder left
    with pytest.warns(UserWarning, match="single shard"):
        resumed = _fit(scenarios.trainer(cut, strategy="fsdp"), resume="last")
    assert resumed.global_step == 8
    _close(_weights(resumed), reference, OTHER_WORLD)
    _close(run["from_one"], reference, OTHER_WORLD)


def test_a_sharded_checkpoint_resumes_without_fsdp_too(run, reference):
    with pytest.warns(UserWarning, match="nothing to train"):
        resumed = _fit(scenarios.trainer(None), resume=str(run["out"] / "full" / "last.dcp"))
    _close(resumed.unwrapped_model.state_dict(), reference, OTHER_WORLD)


def test_a_swap_cut_short_falls_back_and_a_truncated_checkpoint_is_refused(run, tmp_path, reference):
    saved = run["out"] / "full" / "last.dcp"
    shutil.copytree(saved, tmp_path / ".last.dcp.old")  # a crash between moving the old one aside and the rename
    (tmp_path / ".last.dcp.tmp").mkdir()  # and the next write cut short
    with pytest.warns(UserWarning, match="nothing to train"):
        resumed = _fit(scenarios.trainer(tmp_path, strategy="fsdp"), resume="last")
    _close(_weights(resumed), reference, OTHER_WORLD)

    shutil.copytree(saved, tmp_path / "broken")
    for shard in (tmp_path / "broken").glob("*.distcp"):
        shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot read the sharded checkpoint"):
        _fit(scenarios.trainer(None, strategy="fsdp"), resume=str(tmp_path / "broken"))


class _Marker:
    """A pickle payload: unpickling it creates a file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_sharded_checkpoint_whose_index_holds_a_pickle_payload_runs_nothing(run, tmp_path):
    """Issue 37: DCP reads .metadata with pickle.load, so a crafted index ran code on resume."""
    import pickle

    crafted = tmp_path / "crafted"
    shutil.copytree(run["out"] / "full" / "last.dcp", crafted)
    (crafted / ".metadata").write_bytes(pickle.dumps(_Marker(tmp_path / "ran")))
    with pytest.raises(CheckpointError, match=r"refers to io.open, which is not part of a sharded checkpoint.*will not"):
        _fit(scenarios.trainer(None, strategy="fsdp"), resume=str(crafted))
    assert not (tmp_path / "ran").exists()


def test_a_mid_epoch_checkpoint_refuses_another_world_size(run):
    with pytest.raises(CheckpointError, match="middle of an epoch by 2 processes"):
        _fit(scenarios.trainer(None, strategy="fsdp"), resume=str(run["out"] / "cut_step" / "last.dcp"))


def test_a_sharded_checkpoint_of_another_model_is_refused(run):
    net = nn.Sequential(nn.Linear(6, 4), nn.Linear(4, 3))
    trainer = ws.Trainer(net, max_epochs=3, device="cpu", progress=False, strategy="fsdp")
    with pytest.raises(CheckpointError, match="different model"):
        trainer.fit(scenarios.loaders(1)[0], resume=run["out"] / "full" / "last.dcp")


def test_proximal_anchor_is_sharded_and_the_penalty_equals_the_unsharded_one(run):
    result = run["proximal"]
    assert result["anchor_is_sharded"]
    assert result["anchor_local_numel"] < sum(t.numel() for t in result["anchor"].values()) * 0.6  # half, and uneven rows
    w, w0 = result["weights"], result["anchor"]
    expected = 0.5 * sum(((w[n] - w0[n]) ** 2).sum() for n in w0)
    assert result["penalty"].item() == pytest.approx(expected.item(), rel=1e-6)
    _close(result["gradient"], {n: w[n] - w0[n] for n in w0}, 1e-7)
    assert result["given_is_sharded"]
    _close(result["given_anchor"], w0, 0.0)

    net = scenarios.model()  # and the run equals one process without FSDP
    _fit(ProximalTrainer(net, {"name": "sgd", "lr": 0.05, "momentum": 0.9}, lam=2.0, max_epochs=1, device="cpu",
                         progress=False, seed=0, accumulate=2))
    _close(w, net.state_dict(), OTHER_WORLD)


def test_finetune_and_distill_trainers_under_fsdp_match_one_process(run):
    net = scenarios.model()
    _fit(scenarios.finetune_trainer(net))
    _close(run["finetune"]["weights"], net.state_dict(), OTHER_WORLD)
    assert run["finetune"]["weights"]["embed.weight"].equal(scenarios.model().embed.weight.detach())  # frozen

    net = scenarios.model()  # gradual unfreezing: parameters thaw and optimizer groups are added during the run
    _fit(scenarios.gradual_trainer(net))
    _close(run["gradual"], net.state_dict(), OTHER_WORLD)

    student = scenarios.model(seed=6)  # the teacher is replicated on every rank (it has no gradients to shard)
    _fit(DistillTrainer(student, scenarios.model(seed=5), {"name": "adam", "lr": 1e-2}, temperature=2.0, alpha=0.5,
                        max_epochs=1, device="cpu", progress=False, seed=0, accumulate=2))
    _close(run["distill"]["weights"], student.state_dict(), OTHER_WORLD)


def test_evaluate_counts_each_sample_once_over_unequal_shards(run):
    trained = ws.Trainer(scenarios.model(), device="cpu", progress=False)
    trained.unwrapped_model.load_state_dict(load_file(run["out"] / "full" / "last.safetensors"))
    expected = trained.evaluate(torch.utils.data.DataLoader(scenarios.data(5), batch_size=2))
    assert run["full"]["evaluate"]["loss"] == pytest.approx(expected["loss"], abs=1e-5)
    assert run["full"]["evaluate"]["accuracy"] == expected["accuracy"]


def test_bf16_mixed_precision_trains_like_float32(run):
    float32 = _fit(scenarios.trainer(None, max_epochs=1)).history[0]
    assert run["bf16"][0]["train_loss"] == pytest.approx(float32["train_loss"], abs=0.02)


def test_ema_and_best_weights_are_gathered_into_one_file(tmp_path, run):
    _fit(scenarios.trainer(tmp_path, scenarios.callbacks(), max_epochs=1))
    for name in ("ema.safetensors", "best.safetensors"):
        _close(load_file(run["out"] / "callbacks" / name), load_file(tmp_path / name), OTHER_WORLD)


# ---------------------------------------------------------------- bad input (one process)


def test_an_unknown_strategy_is_a_config_error():
    with pytest.raises(ConfigError, match="fsdb.*did you mean 'fsdp'"):
        ws.Trainer(nn.Linear(2, 2), strategy="fsdb")


def test_an_unknown_fsdp_option_names_the_key():
    with pytest.raises(ConfigError, match="trainer.fsdp.block'.*did you mean 'blocks'"):
        ws.Trainer(nn.Linear(2, 2), strategy="fsdp", fsdp={"block": ["layers.*"]})


def test_fsdp_blocks_that_match_nothing_are_named():
    with pytest.raises(ConfigError, match="'Transformer' matches no module of Net.*Block"):
        ws.Trainer(scenarios.model(), device="cpu", strategy="fsdp", fsdp={"blocks": ["Transformer"]})


def test_fsdp_without_torchrun_runs_as_one_shard_and_says_how_to_launch():
    with pytest.warns(UserWarning, match=r"single shard.*torchrun --nproc_per_node=N"):
        trainer = scenarios.trainer(None, strategy="fsdp", fsdp={"blocks": [scenarios.Block]}, max_epochs=1)
    assert trainer.config.fsdp.blocks == ["Block"]  # a class is kept by name: the config stays plain data
    assert type(trainer.unwrapped_model.layers[0].fc1.weight).__name__ == "DTensor"
    _fit(trainer)


def test_a_model_without_blocks_is_sharded_as_one_unit_and_told_so():
    with pytest.warns(UserWarning, match="no repeated blocks found in Sequential.*fsdp=\\{'blocks'"):
        ws.Trainer(nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)), device="cpu", strategy="fsdp")


def test_cpu_offload_on_the_cpu_is_refused():
    with pytest.raises(ConfigError, match="cpu_offload"):
        ws.Trainer(scenarios.model(), device="cpu", strategy="fsdp", fsdp={"cpu_offload": True})
