"""``warmstart run`` with ``task: text``: the schema, every method and student on a tiny checkpoint, and the report."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml

from warmstart.cli import main
from warmstart.errors import ConfigError
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
    students = {"student_hard", "student_human", "student_teacher_labelled", "student_teacher", "student_all_labels"}
    assert set(TEXT_METHODS) | students <= set(results)
    teachers = {m: results[m]["val_accuracy"] for m in ("full", "lora", "lora_proximal")}
    assert results["student_teacher"]["teacher"] == max(teachers, key=teachers.get)  # by validation, never test
    assert results["student_teacher"]["unlabelled"] == 40 and results["majority"]["trainable"] == 0
    assert results["linear_probe"]["trainable"] == 16 * 2 + 2
    assert results["lora"]["trainable"] < results["full"]["trainable"] == results["full"]["params"]
    assert results["lora"]["checkpoint_bytes"] < results["full"]["checkpoint_bytes"]
    for row in results.values():
        assert "accuracy" not in row or (0 <= row["accuracy"] <= 1 and row.get("peak_rss_mb", 1) > 0)
    report = (tmp_path / "report.md").read_text()
    assert "| LoRA |" in report and "| student distilled, labelled + unlabelled words (teacher:" in report
    assert "LoRA adapters and head" in report and "with the labels of 50% of the training words" in report
    for png in ("accuracy_vs_trainable.png", "finetune_curves.png", "distill_curves.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    assert yaml.safe_load((tmp_path / "job.yaml").read_text())["task"] == "text"  # runs again as it is
    assert "| majority class |" in capsys.readouterr().out
