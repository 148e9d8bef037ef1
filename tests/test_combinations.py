"""The combination matrix: {one process, DDP, FSDP} x {MLP, BatchNorm CNN} x training features, three invariants each.

The features: gradient accumulation, gradient clipping, EMA with BestCheckpoint, activation
checkpointing, the proximal anchor (ProximalTrainer), LoRA, the linear probe's feature cache and
BatchNorm held in eval mode (FinetuneTrainer), FitNet feature hints (DistillTrainer). For every combination:

1. two processes at batch B end with the weights of one process at batch 2B;
2. a run interrupted mid-epoch and resumed (``fit(..., resume="last")``) ends bit-exactly where the
   uninterrupted run ends, parameters and buffers, on every rank;
3. the validation the run reports is the validation of the weights it saved, measured here with
   :func:`warmstart.evaluate` on the whole validation set.

A combination the library cannot run is refused with a ConfigError that names it and the way
round; the matrix asserts the refusal.

Under one process and DDP, ``fine_tune``'s choice by validation (:mod:`warmstart.selection`) also runs
against what its folds must keep (an input transform with a random and a fixed step, a DataLoader's
weighted sampler, a plain-list validation loader, soft targets), into an ``out_dir``, whole and killed
during its trials then resumed: the resumed call repeats no recorded trial and ends with the
uninterrupted call's choice and weights, on every rank. The runs (tests/scripts/combination_scenarios.py) happen
once: in this process for one process while one ``torchrun`` of two CPU processes runs them under
DDP and then under FSDP.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import warmstart as ws
from warmstart.errors import ConfigError
from warmstart.finetune import load_adapter

SCRIPTS = Path(__file__).parent / "scripts"
sys.path.insert(0, str(SCRIPTS))
import combination_scenarios as scenarios  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "GLOO_SOCKET_IFNAME": "lo"}
STRATEGIES = ("single", "ddp", "fsdp")
COMBINATIONS = [(kind, feature) for kind in scenarios.MODELS for feature in scenarios.FEATURES]
# FSDP shards the head inside the root unit, so the head alone cannot run on cached features
REFUSED = {("fsdp", kind, "linear_probe"): r"method='linear_probe'.*strategy='fsdp'.*cache_features=False"
           for kind in scenarios.MODELS}
# BatchNorm layers that train: in train mode each rank normalises its half-batch by that half's own mean and
# variance, and updates its running statistics from them. One process normalises the whole batch by its
# statistics, so two processes compute another function; only SyncBatchNorm (which does not run on the CPU)
# would make them agree. What must hold is that every rank ends with the same weights and statistics (the
# strategy averages the statistics over the ranks at every epoch end, before validation and saving).
# LoRA and the linear probe freeze the backbone, its BatchNorm layers in eval mode, and freeze_bn holds every BatchNorm
# layer in eval mode while the rest trains: there (1) holds exactly.
BATCHNORM_TRAINS = {("cnn", feature) for feature in scenarios.FEATURES
                    if feature not in ("lora", "linear_probe", "freeze_bn")}
ACROSS_WORLD_SIZES = 1e-5  # the same global batch summed in another order: float32 rounding only


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict[tuple[str, str], dict[str, Any]]]:
    """Every combination under every strategy: one torchrun (DDP, then FSDP) runs while this process runs its own."""
    out = tmp_path_factory.mktemp("combinations")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(SCRIPTS / "combination_scenarios.py"), str(out)]
    launch = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV,
                              start_new_session=True)
    try:
        single = scenarios.run_all("auto", 1, out / "single")
        log, _ = launch.communicate(timeout=300)
    finally:
        if launch.poll() is None:  # this test failed or timed out: stop the launcher and its workers
            os.killpg(launch.pid, signal.SIGKILL)
            launch.wait()
    assert launch.returncode == 0, log[-6000:]
    return {"single": single, **torch.load(out / "results.pt", weights_only=False)}


# what differs between the ranks, as the refusal names it
MISMATCH_NAMED = {"lr": "optimizer", "width": "model parameters", "accumulate": "trainer.accumulate",
                  "max_epochs": "trainer.max_epochs", "strategy": "trainer.strategy", "batches": "batches per epoch"}


@pytest.mark.parametrize("case", scenarios.MISMATCHES)
def test_ranks_launched_with_other_settings_fail_together_at_once_naming_the_difference(runs, case):
    """Issue 37: they trained apart (rank 0's weights saved), hung in a collective, or aborted in gloo."""
    ranks = runs["mismatch"][case]
    for rank in ranks:
        assert rank["error"] is not None and "the ranks differ in: " + MISMATCH_NAMED[case] in rank["error"], rank
        assert rank["seconds"] < 60
    assert ranks[0]["error"] == ranks[1]["error"]  # one message, on every rank


def _refused(result: dict[str, Any], strategy: str, kind: str, feature: str) -> bool:
    """True for a combination the library refuses, after checking the refusal; False when it must run (and ran)."""
    assert "error" not in result, f"{strategy} x {kind} x {feature} failed:\n{result.get('error')}"
    expected = REFUSED.get((strategy, kind, feature))
    if expected is None:
        assert "refused" not in result, f"{strategy} x {kind} x {feature} was refused: {result.get('refused')}"
        return False
    assert "refused" in result, f"{strategy} x {kind} x {feature} ran, where a ConfigError was expected"
    with pytest.raises(ConfigError, match=expected):
        raise result["refused"]
    return True


def _close(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], atol: float) -> None:
    assert actual.keys() == expected.keys()
    for name, value in actual.items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=atol, msg=name)


def _without_times(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
@pytest.mark.parametrize("kind,feature", COMBINATIONS)
def test_two_processes_at_batch_b_equal_one_process_at_batch_2b(runs, strategy, kind, feature):
    result = runs[strategy][(kind, feature)]
    if _refused(result, strategy, kind, feature):
        return
    rank0, rank1 = result["whole"]
    _close(rank1, rank0, atol=0)  # every rank holds the same parameters and buffers
    if (kind, feature) not in BATCHNORM_TRAINS:  # see BATCHNORM_TRAINS for why BatchNorm in train mode cannot
        _close(rank0, runs["single"][(kind, feature)]["whole"][0], atol=ACROSS_WORLD_SIZES)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("kind,feature", COMBINATIONS)
def test_interrupted_and_resumed_equals_uninterrupted(runs, strategy, kind, feature):
    result = runs[strategy][(kind, feature)]
    if _refused(result, strategy, kind, feature):
        return
    for whole, resumed in zip(result["whole"], result["resumed"], strict=True):  # every rank's own buffers too
        _close(resumed, whole, atol=0)
    assert _without_times(result["resumed_history"]) == _without_times(result["history"])
    for name in ("last.safetensors", *(("ema.safetensors", "best.safetensors") if feature == "ema_best" else ())):
        _close(load_file(result["resumed_dir"] / name), load_file(result["out_dir"] / name), atol=0)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("kind,feature", COMBINATIONS)
def test_reported_validation_is_the_validation_of_the_saved_weights(runs, strategy, kind, feature):
    result = runs[strategy][(kind, feature)]
    if _refused(result, strategy, kind, feature):
        return
    out, history = result["out_dir"], result["history"]
    if feature == "ema_best":  # validation measured the averaged weights: the best of them, and the last
        best = min(history, key=lambda row: row["val_loss"])
        _check_validation(kind, feature, out / "best.safetensors", best)
        _check_validation(kind, feature, out / "ema.safetensors", history[-1])
    else:
        _check_validation(kind, feature, out / "last.safetensors", history[-1])


def _check_validation(kind: str, feature: str, path: Path, row: dict[str, float]) -> None:
    model = scenarios.build_model(kind)
    if feature == "lora":
        load_adapter(model, path)  # the file holds the adapters and the head
    else:
        model.load_state_dict(load_file(path))
    _, val = scenarios.loaders(kind, feature, world=1)
    measured = ws.evaluate(model, val)
    assert measured["loss"] == pytest.approx(row["val_loss"], abs=1e-5)
    assert measured["accuracy"] == pytest.approx(row["val_accuracy"], abs=1e-6)


# fine_tune's choice by validation x what its folds keep x {one process, DDP}; a DataLoader with a weighted sampler is
# one the Trainer cannot shard under torchrun (it names the way round: a DistributedSampler of one's own)
SELECTION_REFUSED = {("ddp", "sampler"): r"custom sampler, give the DataLoader a DistributedSampler"}


@pytest.mark.parametrize("strategy", ["single", "ddp"])
@pytest.mark.parametrize("case", scenarios.SELECTION_CASES)
def test_a_choice_killed_during_its_trials_resumes_to_the_uninterrupted_result(runs, strategy, case):
    result = runs[strategy][("selection", case)]
    assert "error" not in result, f"{strategy} x selection x {case} failed:\n{result.get('error')}"
    expected = SELECTION_REFUSED.get((strategy, case))
    if expected is not None:
        with pytest.raises(ConfigError, match=expected):
            raise result["refused"]
        return
    assert "refused" not in result, result.get("refused")
    whole, resumed = result["selection"], result["resumed_selection"]
    assert resumed == whole and len(whole.scores) == 2  # the recorded trials, not new ones, decided
    left = max(whole.trainings - (result["killed_at"] - 1), 0)
    averaged = case == "ensemble"  # killed as the second member started: the choice is finished, then resumed
    assert result["trainings_after_resume"] == left + 1 + averaged  # the trials left, the choice (and its partner)
    pairs = [("whole", "resumed")] + ([("second", "resumed_second")] if averaged else [])
    for whole_key, resumed_key in pairs:
        for rank_whole, rank_resumed in zip(result[whole_key], result[resumed_key], strict=True):
            _close(rank_resumed, rank_whole, atol=0)
            _close(rank_whole, result[whole_key][0], atol=0)  # every rank holds the same model
    assert all(record == whole.to_dict() for record in result["ranks_selections"])  # every rank chose alike
    if case in ("list_val", "ensemble"):
        assert whole.validation == "the validation loader" and whole.scores["full"].counts == (24,)
    else:
        assert whole.validation.startswith("5-fold") and sum(whole.scores["full"].counts) == scenarios.SELECTION_SAMPLES
    if case != "sampler":  # (trials of 8 steps on a sampler that draws class 0 three times as often predict class 0)
        assert whole.scores["full"].mean > 0.5  # learned, and scored on inputs the model reads (chance: 1/3)
