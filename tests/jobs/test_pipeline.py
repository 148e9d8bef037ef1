"""``warmstart run``: every method runs, results.json / report.md / plots are written, bad settings are refused."""

import json

import pytest

from warmstart.errors import ConfigError
from warmstart.jobs import load_job, run_pipeline
from warmstart.jobs.pipeline import METHODS


def _job(tmp_path, *extra):
    return load_job("run", None, [f"out_dir={tmp_path}", "pretrain.epochs=1", "finetune.epochs=1", "distill.epochs=1",
                                  "source.name=digits", "target.shots=3", "model.args={width: 8}", "student.args={width: 2}",
                                  f"methods={list(METHODS)}", "device=cpu", *extra])


def test_the_pipeline_writes_results_report_and_plots(tmp_path, capsys):
    results = run_pipeline(_job(tmp_path), progress=False)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == results
    expected = {"pretrain", "zero_shot", *METHODS, "student_scratch", "student_distilled"}
    assert expected <= set(saved)
    for name in expected:
        assert 0 <= saved[name]["accuracy"] <= 1 and saved[name]["params"] > 0 and saved[name]["seconds"] >= 0
    assert saved["student_scratch"]["params"] * 10 <= saved["full"]["params"]
    assert saved["student_distilled"]["teacher"] in METHODS
    report = (tmp_path / "report.md").read_text()
    assert "| fine_tune() recipe |" in report and "![" in report
    for png in ("finetune_curves.png", "distill_curves.png", "accuracy.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "job.yaml").is_file() and (tmp_path / "finetune" / "proximal" / "last.pt").is_file()
    assert "| student distilled from the best model |" in capsys.readouterr().out


def test_bad_pipeline_settings_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="alpha must be 1"):
        run_pipeline(_job(tmp_path, "alpha=0.5"), progress=False)
    with pytest.raises(ConfigError, match="more than 1/10 of the model's"):
        run_pipeline(_job(tmp_path, "student.args={width: 8}", "methods=[full]"), progress=False)
