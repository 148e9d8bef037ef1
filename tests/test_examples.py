"""Smoke tests of examples/: each script runs with --dry-run in-process (its main(argv)), and 07 under torchrun."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import warmstart as ws

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCRIPTS = sorted(p.stem for p in EXAMPLES.glob("[0-9][0-9]_*.py"))


def load(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` as a module (its ``if __name__ == "__main__"`` block does not run)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_example_is_tested_and_documented():
    assert SCRIPTS == ["01_pretrain_finetune_mnist", "02_autoencoder_pretraining", "03_partial_transfer",
                       "04_distill_resnet50_to_resnet18_cifar10", "05_hf_sequence_classification",
                       "06_custom_trainer_subclass", "07_torchrun_ddp", "08_prune_and_quantize",
                       "09_transfer_strategies", "10_imagenet_transfer_compress", "11_big_to_small"]
    readme = (EXAMPLES / "README.md").read_text()
    for name in SCRIPTS:
        source = (EXAMPLES / f"{name}.py").read_text()
        assert source.startswith('"""') and f"examples/{name}.py --dry-run" in source, name
        assert "argparse" in source and "def main(argv: list[str] | None = None) -> int:" in source, name
        assert f"{name}.py" in readme, name


def test_01_pretrain_swap_head_load_and_finetune(tmp_path, capsys):
    assert load("01_pretrain_finetune_mnist").main(["--dry-run", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "replaced head: Linear(64 -> 10) with Linear(64 -> 5)" in out
    assert "head skipped  head.weight (10, 64) -> (5, 64), head.bias (10,) -> (5,)" in out
    assert "fine-tuned from fake: test accuracy" in out and "trained from scratch:" in out
    _, metadata = ws.load_weights(tmp_path / "pretrained.safetensors")
    assert (metadata["head"], metadata["num_classes"], metadata["source"]) == ("head", 10, "fake")


def test_a_dry_run_without_out_dir_leaves_no_files(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert load("02_autoencoder_pretraining").main(["--dry-run"]) == 0
    assert "autoencoder: test reconstruction MSE" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []  # no runs/ folder: the weights went to a removed temporary folder


def test_02_autoencoder_then_classifier(tmp_path, capsys):
    assert load("02_autoencoder_pretraining").main(["--dry-run", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "autoencoder: test reconstruction MSE" in out
    for method in ("linear probe", "fine-tune"):
        assert f"{method:<12} encoder from autoencoder: test accuracy" in out
        assert f"{method:<12} encoder from scratch    : test accuracy" in out
    weights, _ = ws.load_weights(tmp_path / "encoder.safetensors")
    assert "code.1.weight" in weights


def test_03_partial_transfer_copies_and_freezes_first_groups(capsys):
    assert load("03_partial_transfer").main(["--dry-run", "--layers", "0", "1", "2"]) == 0
    out = capsys.readouterr().out
    assert "layer groups: block1, block2, block3, head" in out
    assert "transfer 0 group(s) (scratch)" in out
    # block1 = conv weight + BatchNorm (weight, bias, running mean/var, batch count): 6 tensors
    assert "transfer 1 group(s) (block1)" in out and " 6 tensors copied" in out
    assert "transfer 2 group(s) (block1, block2)" in out and "12 tensors copied" in out


def test_08_prune_recover_save_and_quantize(tmp_path, capsys):
    pytest.importorskip("torch_pruning")
    assert load("08_prune_and_quantize").main(["--dry-run", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "recovery on 20% of the training labels: " in out and "-> finetune" in out
    assert "reloaded outputs identical: True" in out
    assert "| trained CNN |" in out and "| pruned, before recovery |" in out and "quantize: " in out
    assert (tmp_path / "pruned.safetensors").is_file()


def test_09_every_transfer_strategy_trains_beside_its_control(capsys):
    assert load("09_transfer_strategies").main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    for row in ("from random weights (control)", "feature extraction (linear probe)", "partial transfer",
                "full transfer", "gradual unfreezing", "fine_tune() (recipe+full)"):  # too few labels to choose
        assert row in out, row


def test_10_an_imagenet_network_fine_tuned_pruned_recovered_quantized_and_served(tmp_path, capsys):
    pytest.importorskip("timm")
    pytest.importorskip("torch_pruning")
    assert load("10_imagenet_transfer_compress").main(["--dry-run", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "fine-tuned EfficientNet-Lite0" in out and "pruned, recovered by distillation" in out
    assert "gives the same predictions: True" in out and (tmp_path / "animals_int8.pt2").is_file()


def test_11_a_student_distilled_beside_its_same_steps_control(capsys):
    pytest.importorskip("timm")
    assert load("11_big_to_small").main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "teacher lite0" in out and "distilled on every image" in out and "(control)" in out
    steps = [line.rsplit("after ", 1)[1] for line in out.splitlines() if "optimizer steps" in line]
    assert len(steps) == 2 and steps[0] == steps[1]  # the control trains as many optimizer steps


def test_04_distill_dry_run(tmp_path, capsys):
    assert load("04_distill_resnet50_to_resnet18_cifar10").main(["--dry-run", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "train_kd" in out and "student (ResNet-18, 11.2M parameters): test accuracy" in out
    _, metadata = ws.load_weights(tmp_path / "last.safetensors")
    assert metadata["teachers"][0]["class"] == "ResNet"
    assert metadata["distillation"]["temperature"] == 4.0


def test_04_without_data_exits_1_and_points_to_dry_run(monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise ws.DataError("could not load cifar10 (URLError: offline)")

    monkeypatch.setattr(ws.data, "torchvision_splits", offline)
    assert load("04_distill_resnet50_to_resnet18_cifar10").main([]) == 1
    err = capsys.readouterr().err
    assert "could not load cifar10" in err and "--dry-run" in err


def test_05_minilm_lora_offline(capsys):
    if load("05_hf_sequence_classification").missing_packages():
        pytest.skip("example 05 needs the text extra (pip install 'warmstart[text]')")
    assert load("05_hf_sequence_classification").main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "all-MiniLM-L6-v2: BertForSequenceClassification, 22,713,986 parameters" in out
    assert "lora: 332,546 trainable parameters (1.46% of the model's)" in out
    assert "val_accuracy" in out and "test accuracy" in out and "merged the adapters" in out


def test_05_skips_cleanly_without_the_text_extra(monkeypatch, capsys):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else find_spec(name, *a))
    assert load("05_hf_sequence_classification").main(["--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("skipped: this example needs peft (pip install 'warmstart[text]')")


def test_06_custom_trainer_logs_extra_terms(capsys):
    assert load("06_custom_trainer_subclass").main(["--dry-run", "--gammas", "2"]) == 0
    out = capsys.readouterr().out
    assert "train_ce" in out and "val_confidence" in out
    assert "gamma 2: test accuracy" in out and "over-confidence" in out


def test_07_single_process(tmp_path, capsys):
    assert load("07_torchrun_ddp").main(["--dry-run", "--out-dir", str(tmp_path)]) == 0
    assert "1 process(es), global batch 16: test accuracy" in capsys.readouterr().out
    assert (tmp_path / "last.safetensors").exists()


def test_07_under_torchrun_two_processes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "GLOO_SOCKET_IFNAME": "lo"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(EXAMPLES / "07_torchrun_ddp.py"), "--dry-run", "--out-dir", str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("2 process(es), global batch 32: test accuracy") == 1  # rank 0 only
    assert result.stdout.count("epoch 1: train_loss") == 1
    assert (tmp_path / "last.safetensors").exists()
