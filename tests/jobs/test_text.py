"""``warmstart run`` with ``task: text``: the schema, every method and student on a tiny checkpoint, and the report."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml

from warmstart.cli import main
from warmstart.errors import ConfigError, RunExistsError
from warmstart.jobs import TEXT_METHODS, PipelineJob, TextPipelineJob, load_job, run_text_pipeline

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "text_sentiment.yaml"
NEEDS = ("transformers", "peft", "vaderSentiment", "all_minilm_l6_v2", "matplotlib")


def test_task_text_selects_the_text_schema_and_shares_the_trainer_section():
    job = load_job("run", CONFIG, ["trainer.seed=3", "lora.trainer.max_epochs=4"])
    assert isinstance(job, TextPipelineJob) and job.methods == list(TEXT_METHODS)
    assert job.lora.trainer.max_epochs == 4 and job.finetune.trainer.max_epochs == 3
    assert job.lora.trainer.seed == job.distill.trainer.seed == job.probe.trainer.seed == 3
    assert job.lora.trainer.device == "cpu" and job.data.labelled == 0.25
    assert isinstance(load_job("run", None, ["task=images"]), PipelineJob)
    with pytest.raises(ConfigError, match="unknown task 'txt' of warmstart run.*did you mean 'text'"):
        load_job("run", None, ["task=txt"])
    with pytest.raises(ConfigError, match="unknown text method 'lorra'.*did you mean 'lora'"):
        load_job("run", CONFIG, ["methods=[majority, lorra]"])
    with pytest.raises(ConfigError, match=r"data.labelled \(the share of training labels used\) must be in \(0, 1\]"):
        load_job("run", CONFIG, ["data.labelled=0"])


def test_the_shipped_config_prints_as_it_runs(capsys):
    assert main(["run", str(CONFIG), "--print-config"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["task"] == "text" and resolved["model"] == "all-MiniLM-L6-v2" and resolved["lora"]["r"] == 8


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A 2-layer, 16-wide BERT saved with all-MiniLM-L6-v2's tokenizer: the pipeline's mechanics in seconds."""
    for module in NEEDS:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"the text pipeline needs {module} (pip install 'warmstart[text]')")
    import transformers

    from warmstart.finetune import minilm_path

    folder = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=32)
    transformers.BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_every_method_and_student_run_and_report(tiny_checkpoint, tmp_path, capsys):
    job = load_job("run", CONFIG, [f"out_dir={tmp_path}", f"model={tiny_checkpoint}", "data.limit=80",
                                   "trainer.progress=false", "finetune.trainer.max_epochs=1", "lora.trainer.max_epochs=2",
                                   "probe.trainer.max_epochs=3", "distill.trainer.max_epochs=3", "data.labelled=0.5"])
    results = run_text_pipeline(job, progress=False)
    assert json.loads((tmp_path / "results.json").read_text()) == results
    students = {"student_hard", "student_human", "student_teacher_labelled", "student_teacher", "student_all_labels",
                "student_hard_same_steps"}
    rows = results["methods"]
    assert set(TEXT_METHODS) | students == set(rows)
    # the fair control: hard labels for as many optimizer steps as the distillation on labelled + unlabelled words
    steps = rows["student_teacher"]["steps"]
    assert rows["student_hard_same_steps"]["steps"] == steps > rows["student_hard"]["steps"] > 0
    assert results["gains"]["student_teacher"]["control"] == "student_hard_same_steps"
    assert results["gains"]["full"]["control"] == "scratch" and results["gains"]["lora_proximal"]["control"] == "lora"
    # the teacher: LoRA unless another beats it on validation beyond chance (never by test accuracy)
    teacher = results["teacher"]
    assert rows["student_teacher"]["teacher"] == teacher in ("full", "lora", "lora_proximal")
    assert teacher == "lora" or rows[teacher]["val_accuracy"] > rows["lora"]["val_accuracy"]
    assert rows["majority"]["trainable"] == rows["majority"]["params"] == 0
    assert rows["linear_probe"]["trainable"] == 16 * 2 + 2
    assert rows["lora"]["trainable"] < rows["full"]["trainable"] == rows["full"]["params"]
    assert rows["lora"]["checkpoint_bytes"] < rows["full"]["checkpoint_bytes"]
    assert all(0 <= row["accuracy"] <= 1 for row in rows.values()) and rows["full"]["memory_mb"] >= 0
    report = (tmp_path / "report.md").read_text()
    assert "| LoRA |" in report and "| student distilled, labelled + unlabelled words |" in report
    assert "| weights file (MB) |" in report and "40 labelled and 40 unlabelled training words" in report
    assert "vs student, hard labels, as many optimizer steps (control) (" in report
    for png in ("accuracy.png", "curves.png", "student_curves.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    assert yaml.safe_load((tmp_path / "job.yaml").read_text())["task"] == "text"  # runs again as it is
    assert "| majority class |" in capsys.readouterr().out


def _quick_job(out_dir: Path, model: Path, *overrides: str) -> TextPipelineJob:
    return load_job("run", CONFIG, [f"out_dir={out_dir}", f"model={model}", "data.limit=20", "trainer.progress=false",
                                    "trainer.max_epochs=1", "methods=[majority]", "distill.buckets=64", *overrides])


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_finished_run_is_never_replaced_unasked(tiny_checkpoint, tmp_path):
    run_text_pipeline(_quick_job(tmp_path, tiny_checkpoint), progress=False)
    first = _files(tmp_path)
    assert {"results.json", "report.md", "job.yaml", "distill/student_hard/last.safetensors"} <= set(first)
    assert "curves.png" not in first  # no fine-tuned method: no empty plot
    with pytest.raises(RunExistsError, match=r"holds an earlier run .*results.json.*--overwrite"):
        run_text_pipeline(_quick_job(tmp_path, tiny_checkpoint), progress=False)
    with pytest.raises(ConfigError, match="LoRA rank r must be"):  # a bad setting deletes nothing, even with overwrite
        run_text_pipeline(_quick_job(tmp_path, tiny_checkpoint, "methods=[lora]", "lora.r=0", "trainer.overwrite=true"),
                          progress=False)
    assert _files(tmp_path) == first  # byte-identical
    results = run_text_pipeline(_quick_job(tmp_path, tiny_checkpoint, "methods=[linear_probe]", "trainer.overwrite=true"),
                                progress=False)
    assert "majority" not in results["methods"] and json.loads((tmp_path / "results.json").read_text()) == results
    assert (tmp_path / "linear_probe" / "last.safetensors").is_file()


@pytest.mark.parametrize("override, message", [
    ("lora.r=0", r"lora: LoRA rank r must be an integer >= 1, got 0"),
    ("lora.targets=[]", r"lora: LoRA targets must be 'auto' or a non-empty list"),
    ("lora.targets=[qurey]", r"lora.targets: LoRA target 'qurey' matches no Linear or Conv layer"),
    ("lora.dropout=1.5", r"lora: LoRA dropout must be in \[0, 1\)"),
    ("lora.trainer.precision=16", r"lora.trainer: precision='16' .* needs a GPU"),
    ("lora.optimizer.name=adamx", r"lora.optimizer: unknown optimizer 'adamx'"),
    ("lora.scheduler.name=cosin", r"lora.scheduler: unknown scheduler 'cosin'"),
    ("lora.proximal=-1", r"lora.proximal: lam must be a positive finite number"),
    ("distill.buckets=0", r"distill: buckets must be >= 2"),
])
def test_every_setting_is_checked_before_anything_is_written_or_trained(tiny_checkpoint, tmp_path, override, message):
    job = _quick_job(tmp_path, tiny_checkpoint, "methods=[majority, linear_probe, full, lora, lora_proximal]", override)
    with pytest.raises(ConfigError, match=message):
        run_text_pipeline(job, progress=False)
    assert not any(tmp_path.iterdir())  # not even job.yaml: no method trained before the refusal


def test_a_model_whose_tokenizer_is_not_its_own_is_refused_before_training(tiny_checkpoint, tmp_path):
    import transformers

    folder = tmp_path / "mismatched"
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32)
    transformers.BertForSequenceClassification(config).save_pretrained(folder)
    transformers.AutoTokenizer.from_pretrained(tiny_checkpoint).save_pretrained(folder)  # 30,522 ids for 50 rows
    with pytest.raises(ConfigError, match=r"model: the tokenizer of .* has 30,522 token ids, but the model embeds only 50"):
        run_text_pipeline(_quick_job(tmp_path / "run", folder, "methods=[majority, linear_probe]"), progress=False)
    assert not (tmp_path / "run").exists()  # nothing written, not even the folder


def test_every_method_sees_the_labelled_words_in_the_same_order_whatever_ran_before(tiny_checkpoint, tmp_path):
    from safetensors.torch import load_file

    weights = {}
    for methods in ("[lora]", "[full, lora]"):
        out = tmp_path / methods.strip("[]").replace(", ", "_")
        run_text_pipeline(_quick_job(out, tiny_checkpoint, f"methods={methods}", "trainer.max_epochs=2",
                                     "distill.trainer.max_epochs=1"), progress=False)
        weights[methods] = load_file(out / "lora" / "last.safetensors")
    alone, after = weights.values()
    assert alone.keys() == after.keys() and all(torch.equal(alone[k], after[k]) for k in alone)


def test_seeds_run_every_method_once_per_seed_as_single_seed_runs_would(tiny_checkpoint, tmp_path):
    methods = ("methods=[scratch, full]", "distill.trainer.max_epochs=1")
    results = run_text_pipeline(_quick_job(tmp_path / "both", tiny_checkpoint, "seeds=[0, 1]", *methods), progress=False)
    full = results["methods"]["full"]
    assert set(full["per_seed"]) == {"0", "1"} and full["accuracy_sd"] is not None
    assert results["gains"]["full"]["seeds"] == 2 and results["methods"]["student_hard"]["per_seed"].keys() == {"0", "1"}
    assert (tmp_path / "both" / "seed1" / "full" / "last.safetensors").is_file()
    for seed in (0, 1):  # each seed's rows are what a run with that trainer.seed alone gives
        alone = run_text_pipeline(_quick_job(tmp_path / f"seed{seed}", tiny_checkpoint, f"trainer.seed={seed}", *methods),
                                  progress=False)
        for name in ("scratch", "full", "student_hard"):
            assert results["methods"][name]["per_seed"][str(seed)] == alone["methods"][name]["per_seed"][str(seed)]
    with pytest.raises(ConfigError, match="seeds must be a non-empty list of distinct seeds"):
        _quick_job(tmp_path / "bad", tiny_checkpoint, "seeds=[1, 1]")
