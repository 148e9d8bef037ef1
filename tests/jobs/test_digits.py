"""``warmstart run``: every method runs as a stage job, choices use validation, reports are written, bad settings refused."""

import json

import pytest
import yaml

from warmstart.errors import ConfigError, RunExistsError
from warmstart.jobs import METHODS, load_job, run_pipeline
from warmstart.jobs.digits import CONTROLS


def _job(tmp_path, *extra):
    return load_job("run", None, [f"out_dir={tmp_path}", "trainer.max_epochs=1", "trainer.device=cpu",
                                  "trainer.progress=false", "source.name=digits", "target.shots=3",
                                  "target.val_per_class=2", "model.args={width: 8}", "distill.student.args={width: 2}",
                                  f"finetune.methods={list(METHODS)}", "finetune.keep_head=true", *extra])


def test_the_pipeline_writes_results_report_and_plots(tmp_path, capsys):
    results = run_pipeline(_job(tmp_path), progress=False)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == results
    rows = saved["methods"]
    expected = {"pretrain", "zero_shot", *METHODS, "student_scratch", "student_distilled", "student_hard_same_steps"}
    assert expected == set(rows)
    for name in expected:
        assert 0 <= rows[name]["accuracy"] <= 1 and rows[name]["params"] > 0 and rows[name]["seconds"] >= 0
    assert rows["student_scratch"]["params"] * 10 <= rows["full"]["params"]
    # the fair control: the labels alone for as many optimizer steps as the distillation over every training image took
    steps = {name: rows[name]["steps"] for name in ("student_scratch", "student_distilled", "student_hard_same_steps")}
    assert steps["student_hard_same_steps"] == steps["student_distilled"] > steps["student_scratch"] > 0
    stage = yaml.safe_load((tmp_path / "distill" / "student_hard_same_steps" / "job.yaml").read_text())
    assert stage["trainer"]["max_steps"] == steps["student_distilled"] and stage["method"] == "full"
    # each transfer method against its control from random weights, the distilled student against its same-steps one
    assert saved["gains"]["recipe"]["control"] == "recipe_scratch" and saved["gains"]["full"]["control"] == "scratch"
    assert saved["gains"]["student_distilled"]["control"] == "student_hard_same_steps"
    gain = saved["gains"]["recipe"]
    assert gain["mean"] == pytest.approx(rows["recipe"]["accuracy"] - rows["recipe_scratch"]["accuracy"], abs=1e-6)
    assert gain["wins"] == (gain["mean"] > 0) and gain["seeds"] == 1 and gain["sd"] is None
    # the teacher: the recipe unless another beats it on validation beyond chance (20 validation images: none can)
    candidates = [m for m in METHODS if m not in CONTROLS]  # both controls train without pretrained weights
    assert saved["teacher"] == rows["student_distilled"]["teacher"] == "recipe" and "recipe" in candidates
    report = (tmp_path / "report.md").read_text()
    assert "| fine_tune() recipe (chose " in report and "![" in report and "validation" in report
    assert f"warmstart run {tmp_path / 'job.yaml'}" in report and "The teacher is fine_tune() recipe" in report
    assert "| same student, labels alone, as many optimizer steps (control) |" in report
    for png in ("curves.png", "student_curves.png", "accuracy.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "finetune" / "proximal" / "last.pt").is_file()
    assert "| student distilled from the teacher |" in capsys.readouterr().out


def test_each_stage_is_a_job_of_its_own_with_the_shared_trainer_settings(tmp_path):
    results = run_pipeline(_job(tmp_path, "finetune.methods=[full]", "finetune.trainer.max_epochs=2",
                                "distill.unlabelled=false"), progress=False)
    # distilled on the labelled images: as many steps as the labels-alone control, so no second control trains
    rows = results["methods"]
    assert rows["student_distilled"]["steps"] == rows["student_scratch"]["steps"]
    assert results["gains"]["student_distilled"]["control"] == "student_scratch"  # the same steps: the fair control
    assert "student_hard_same_steps" not in rows and not (tmp_path / "distill" / "student_hard_same_steps").exists()
    stage = yaml.safe_load((tmp_path / "finetune" / "full" / "job.yaml").read_text())
    assert stage["method"] == "full" and stage["pretrained"].endswith("pretrain/pretrained.safetensors")
    assert stage["trainer"]["max_epochs"] == 2 and stage["trainer"]["device"] == "cpu"  # stage wins, shared fills in
    pretrain = yaml.safe_load((tmp_path / "pretrain" / "job.yaml").read_text())
    assert pretrain["trainer"]["max_epochs"] == 1 and pretrain["trainer"]["seed"] == stage["trainer"]["seed"]


def test_bad_pipeline_settings_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="distill.alpha must be 1"):
        _job(tmp_path, "distill.alpha=0.5")
    with pytest.raises(ConfigError, match="more than 1/10 of the model's"):
        run_pipeline(_job(tmp_path, "distill.student.args={width: 8}", "finetune.methods=[full]"), progress=False)
    with pytest.raises(ConfigError, match="set target.val_per_class"):
        run_pipeline(_job(tmp_path, "target.val_per_class=null"), progress=False)
    with pytest.raises(ConfigError, match=r"unknown config key 'finetune.epochs' \(did you mean 'finetune.trainer.max_epochs'"):
        _job(tmp_path, "finetune.epochs=3")


def test_a_run_into_an_earlier_runs_folder_is_refused_and_overwrite_replaces_every_stage(tmp_path):
    run_pipeline(_job(tmp_path, "finetune.methods=[full]"), progress=False)
    first = (tmp_path / "finetune" / "full" / "last.pt").read_bytes()
    with pytest.raises(RunExistsError, match=r"another folder \(out_dir=PATH\); to replace it, pass --overwrite"):
        run_pipeline(_job(tmp_path, "finetune.methods=[partial]"), progress=False)
    assert (tmp_path / "finetune" / "full" / "last.pt").read_bytes() == first
    assert not (tmp_path / "finetune" / "partial").exists()
    job = _job(tmp_path, "finetune.methods=[partial]")
    job.trainer.overwrite = True  # the job's permission reaches every stage's trainer
    run_pipeline(job, progress=False)
    assert not (tmp_path / "finetune" / "full").exists()  # no stage of the earlier run is left beside the new ones
    assert (tmp_path / "finetune" / "partial" / "last.pt").is_file() and (tmp_path / "pretrain" / "last.pt").is_file()
    assert yaml.safe_load((tmp_path / "job.yaml").read_text())["trainer"]["overwrite"] is False


def test_every_stage_is_checked_before_the_first_trains(tmp_path, monkeypatch):
    """Issue 23: a later stage's optimizer, schedule, precision or temperature failed only after the earlier stages."""
    from warmstart.jobs import digits

    monkeypatch.setattr(digits, "run_pretrain", lambda *args, **kwargs: pytest.fail("the pretraining started"))
    for override, message in [("finetune.optimizer.name=adamx", "finetune.optimizer: unknown optimizer 'adamx'"),
                              ("distill.scheduler.name=cosin", "distill.scheduler: unknown scheduler 'cosin'"),
                              ("distill.trainer.precision=16", "distill.trainer: precision='16' .* needs a GPU"),
                              ("distill.temperature=-1", "distill.temperature must be a positive number"),
                              ("finetune.label_smoothing=1.5", "finetune.label_smoothing must be in \\[0, 1\\]"),
                              ("distill.student.args.width=-2", "distill.student.args.width=-2: a size of model")]:
        with pytest.raises(ConfigError, match=message):
            run_pipeline(_job(tmp_path / "run", override, "source.name=fake", "target.name=fake", "target.shots=null"),
                         progress=False)
        assert not (tmp_path / "run" / "pretrain").exists()


def test_a_run_stopped_after_a_stage_resumes_where_it_stopped(tmp_path, monkeypatch):
    """Issue 37: after a kill the CLI offered only --overwrite, which loses the finished stages."""
    import shutil

    from warmstart.jobs import digits

    options = ("finetune.methods=[full]", "distill.unlabelled=false")  # no seed: the resumed run takes the recorded one
    whole = run_pipeline(_job(tmp_path / "whole", *options), progress=False)
    calls = []
    real = digits.run_finetune
    monkeypatch.setattr(digits, "run_finetune", lambda *a, **k: calls.append(1) or real(*a, **k))
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "whole", cut)
    shutil.rmtree(cut / "distill")  # as if killed after fine-tuning: the distillation stage never ran
    (cut / "results.json").unlink()
    with pytest.raises(RunExistsError, match=r"continue it with --resume"):
        run_pipeline(_job(cut, *options), progress=False)
    with pytest.warns(UserWarning, match="nothing to train"):  # the finished stages load their checkpoints
        resumed = run_pipeline(_job(cut, *options), progress=False, resume=True)
    assert {k: v["accuracy"] for k, v in resumed["methods"].items()} == \
        {k: v["accuracy"] for k, v in whole["methods"].items()}
    assert calls  # the finished stages were visited (and trained nothing)
