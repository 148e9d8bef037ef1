"""The ``warmstart`` command: help, config errors, overrides and the three jobs end to end on tiny data."""

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from warmstart._run_dir import LOCK_NAME
from warmstart.cli import main
from warmstart.config import read_yaml

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("command", ["pretrain", "finetune", "distill", "run"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "key=value" in capsys.readouterr().out


def test_python_dash_m_runs_the_cli():
    out = subprocess.run([sys.executable, "-m", "warmstart", "--help"], capture_output=True, text=True, check=True)
    assert "pretrain" in out.stdout and "distill" in out.stdout


@pytest.mark.parametrize("kind", ["pretrain", "finetune", "distill", "digits_transfer"])
def test_shipped_configs_validate(kind, capsys):
    command = "run" if kind == "digits_transfer" else kind
    assert main([command, str(CONFIGS / f"{kind}.yaml"), "--print-config"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved == {**resolved, **{k: v for k, v in read_yaml(CONFIGS / f"{kind}.yaml").items()
                                       if not isinstance(v, dict)}}


def test_unknown_keys_and_wrong_types_are_named(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_epoch: 3\n")
    assert main(["pretrain", str(bad)]) == 2
    assert "unknown config key 'trainer.max_epoch' (did you mean 'max_epochs'?)" in capsys.readouterr().err
    assert main(["finetune", "method=ful"]) == 2
    assert "must be 'linear_probe' or 'partial' or 'full'" in capsys.readouterr().err
    assert main(["distill", "temperature=hot"]) == 2
    assert "config key 'temperature' must be float, got str 'hot'" in capsys.readouterr().err
    assert main(["run", "finetune.methods=[scratch, fulll]"]) == 2
    assert "unknown fine-tuning method 'fulll'" in capsys.readouterr().err
    assert main(["run", "finetune.epochs=3"]) == 2
    assert "did you mean 'finetune.trainer.max_epochs'?" in capsys.readouterr().err


def test_yaml_tags_do_not_run(tmp_path, capsys):
    evil = tmp_path / "evil.yaml"
    evil.write_text("trainer: !!python/object/apply:os.system ['echo pwned']\n")
    assert main(["pretrain", str(evil)]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_pretrain_finetune_distill_chain_on_fake_data(tmp_path, capsys):
    data = ["data.name=fake", "data.fake_size=32", "data.batch_size=16", "trainer.max_epochs=1", "--quiet"]
    pre = tmp_path / "pre"
    assert main(["pretrain", str(CONFIGS / "pretrain.yaml"), f"trainer.out_dir={pre}", *data]) == 0
    saved = read_yaml(pre / "job.yaml")
    assert saved["data"]["name"] == "fake" and saved["trainer"]["max_epochs"] == 1  # the resolved config
    assert read_yaml(pre / "config.yaml")["job"] == saved  # also beside the trainer's own settings
    assert (pre / "pretrained.safetensors").is_file() and (pre / "last.pt").is_file()
    fine = tmp_path / "fine"
    assert main(["finetune", str(CONFIGS / "finetune.yaml"), f"pretrained={pre}/pretrained.safetensors",
                 f"trainer.out_dir={fine}", "method=gradual", "data.shots=null", *data]) == 0
    assert (fine / "finetuned.safetensors").is_file()
    kd = tmp_path / "kd"
    assert main(["distill", str(CONFIGS / "distill.yaml"), f"teacher_weights={pre}/pretrained.safetensors",
                 f"trainer.out_dir={kd}", *data]) == 0
    assert (kd / "student.safetensors").is_file() and (kd / "teacher_logits.npy").is_file()
    out = capsys.readouterr().out
    assert "[warmstart distill] test_loss=" in out and "test_accuracy=" in out and "teacher_accuracy=" in out


@pytest.mark.parametrize("key", ["method", "strategy"])
def test_finetune_method_from_the_command_line_and_its_deprecated_spelling(key, tmp_path, recwarn):
    out = tmp_path / key
    assert main(["finetune", f"{key}=gradual", f"{key}_args={{unfreeze_every: 2}}", "data.name=fake", "data.fake_size=16",
                 "trainer.max_epochs=2", f"trainer.out_dir={out}", "data.shots=null", "--quiet"]) == 0
    saved = read_yaml(out / "job.yaml")
    assert saved["method"] == "gradual" and saved["method_args"] == {"unfreeze_every": 2} and "strategy" not in saved
    assert (out / "finetuned.safetensors").is_file()
    deprecated = [str(w.message) for w in recwarn if w.category is DeprecationWarning and "strategy" in str(w.message)]
    if key == "method":
        assert not deprecated
    else:
        assert len(deprecated) == 2 and "use 'method' (method: gradual)" in deprecated[0]
        assert "use 'method_args'" in deprecated[1]


def test_a_finetune_file_with_the_deprecated_strategy_key_warns_and_reads_as_method(tmp_path, capsys):
    old = tmp_path / "old.yaml"
    old.write_text("strategy: gradual\nstrategy_args: {head_epochs: 2}\ntrainer: {strategy: ddp}\n")
    with pytest.warns(DeprecationWarning, match="finetune job key 'strategy(_args)?' \\(in the file\\) is deprecated: use 'method"):
        assert main(["finetune", str(old), "--print-config"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["method"] == "gradual" and resolved["method_args"] == {"head_epochs": 2}
    assert resolved["trainer"]["strategy"] == "ddp"  # the parallelism keeps its word
    with pytest.warns(DeprecationWarning):  # the command line's method wins over the file's, as for any key
        assert main(["finetune", str(old), "method=partial", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["method"] == "partial"
    assert main(["finetune", "method=full", "strategy=gradual"]) == 2
    assert "sets both 'method' and its deprecated spelling 'strategy'" in capsys.readouterr().err


def test_autoencoder_pretraining_writes_the_encoder(tmp_path):
    out = tmp_path / "ae"
    assert main(["pretrain", "method=autoencoder", "autoencoder={width: 4, latent: 8, noise: 0.1}", "data.name=fake",
                 "data.fake_size=16", "trainer.max_epochs=1", f"trainer.out_dir={out}", "--quiet"]) == 0
    assert (out / "encoder.safetensors").is_file()


def test_missing_pretrained_file_is_a_clear_error(tmp_path, capsys):
    assert main(["finetune", f"pretrained={tmp_path}/nope.safetensors", "data.name=fake", f"trainer.out_dir={tmp_path}",
                 "data.shots=null", "--quiet"]) == 2
    assert "nope.safetensors" in capsys.readouterr().err


def test_finetune_recipe_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "fine"
    assert main(["finetune", "method=recipe", "method_args={select: false, freeze_epochs: 1}", "data.name=fake",
                 "data.fake_size=16", "trainer.max_epochs=1", "trainer.seed=0", f"trainer.out_dir={out}",
                 "data.shots=null", "--quiet"]) == 0
    assert (out / "probe" / "last.pt").is_file() and (out / "full" / "last.pt").is_file()
    assert (out / "finetuned.safetensors").is_file()
    chosen = tmp_path / "chosen"  # the default recipe chooses on validation and says what it chose
    assert main(["finetune", "method=recipe", "data.name=fake", "data.fake_size=32", "data.val_per_class=1",
                 "trainer.max_epochs=2", "trainer.seed=0", f"trainer.out_dir={chosen}", "data.shots=null",
                 "--quiet"]) == 0
    assert "choice=" in capsys.readouterr().out and (chosen / "full" / "last.pt").is_file()


def test_help_and_import_load_neither_torch_nor_torchvision():
    code = ("import sys, contextlib, io\nimport warmstart\nfrom warmstart.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n    main(['run', '--help'])\n"
            "assert 'torch' not in sys.modules, 'torch'\n"
            "warmstart.Trainer\nassert 'torchvision' not in sys.modules, 'torchvision'\n")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)


# the cheapest training job: 16 fake images, one epoch
TINY = ["pretrain", "data.name=fake", "data.fake_size=16", "data.batch_size=16", "trainer.max_epochs=1"]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_second_run_into_a_finished_runs_folder_is_refused_and_overwrite_replaces_it(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TINY, f"trainer.out_dir={out}", "trainer.seed=1", "--quiet"]) == 0
    first = _files(out)
    assert {"job.yaml", "last.pt", "metrics.csv", "pretrained.safetensors"} <= set(first)
    capsys.readouterr()
    assert main([*TINY, f"trainer.out_dir={out}", "trainer.seed=2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"warmstart pretrain: error: out_dir '{out}' holds an earlier run trained to epoch 1, step 1 ")
    assert "last.pt" in err and "job.yaml" in err and "another folder (trainer.out_dir=PATH)" in err
    assert "pass --overwrite" in err and err.count("\n") == 1  # one line, no traceback
    assert _files(out) == first  # every file of the first run as it was, job.yaml included
    (out / "notes.txt").write_text("mine")
    assert main([*TINY, f"trainer.out_dir={out}", "trainer.seed=2", "--overwrite", "--quiet"]) == 0
    saved = read_yaml(out / "job.yaml")
    assert saved["trainer"]["seed"] == 2  # the new run's
    assert saved["trainer"]["overwrite"] is False  # recorded without the permission: a rerun of it is refused again
    assert (out / "last.pt").read_bytes() != first["last.pt"] and (out / "notes.txt").read_text() == "mine"
    assert read_yaml(out / "config.yaml")["job"] == saved
    assert main(["pretrain", str(out / "job.yaml"), "--quiet"]) == 2
    assert "holds an earlier run" in capsys.readouterr().err


def test_a_run_refused_by_a_live_runs_lock_touches_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "job.yaml").write_text("the live run's settings\n")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (out / LOCK_NAME).write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(), "started": 0}))
        for extra in ([], ["--overwrite"]):  # overwrite replaces a finished run, never a live one
            assert main([*TINY, f"trainer.out_dir={out}", *extra, "--quiet"]) == 2
            assert f"in use by another run: process {holder.pid}" in capsys.readouterr().err
            assert sorted(os.listdir(out)) == [LOCK_NAME, "job.yaml"]
            assert (out / "job.yaml").read_text() == "the live run's settings\n"
    finally:
        holder.kill()
        holder.wait(timeout=60)


@pytest.mark.parametrize("command", ["pretrain", "finetune", "distill", "run", "compress"])
def test_every_command_takes_overwrite(command, capsys):
    assert main([command, "--overwrite", "--print-config"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["trainer"]["overwrite"] is True
    if command == "run":  # and every stage of a pipeline, whose folders hold the earlier run's stages
        assert all(resolved[stage]["trainer"]["overwrite"] for stage in ("pretrain", "finetune", "distill"))


def test_one_table_gives_every_command_its_help_schema_and_runner(capsys):
    """Issue 23: the commands' help, examples, schemas and runners were parallel tables in cli.py and schema.py."""
    from warmstart.jobs.schema import COMMANDS, command_of, load_job

    for command in COMMANDS:
        with pytest.raises(SystemExit):
            main([command.name, "--help"])
        shown = " ".join(capsys.readouterr().out.split())  # argparse wraps the description
        assert " ".join(command.help.split()) in shown and f"warmstart {command.name} {command.example}" in shown
        job = load_job(command.name, None, [] if command.task is None else [f"task={command.task}"])
        assert command_of(job) is command and callable(command.load_runner())
    with pytest.raises(SystemExit) as refused:
        main(["plot"])
    assert refused.value.code == 2


def test_a_config_path_with_an_equals_sign_is_a_file_not_an_override(tmp_path, capsys):
    """Issue 37: 'runs/lr=0.01/job.yaml' was read as the override runs/lr=0.01/job.yaml."""
    folder = tmp_path / "lr=0.01"
    folder.mkdir()
    (folder / "job.yaml").write_text("trainer:\n  max_epochs: 2\n")
    assert main(["pretrain", str(folder / "job.yaml"), "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["trainer"]["max_epochs"] == 2
    assert main(["pretrain", str(folder / "missing.yaml")]) == 2  # a YAML name that is no file: named as such
    assert "does not exist" in capsys.readouterr().err


def test_a_stopped_run_continues_with_resume(tmp_path, capsys):
    """Issue 37: after a SIGKILL the CLI offered only --overwrite, which loses the finished epochs."""
    out = tmp_path / "run"
    assert main([*TINY, f"trainer.out_dir={out}", "trainer.seed=1", "--quiet"]) == 0  # 1 epoch, then "killed"
    capsys.readouterr()
    assert main([*TINY, f"trainer.out_dir={out}", "trainer.seed=1", "trainer.max_epochs=2", "--quiet"]) == 2
    assert "continue it with --resume (the same command and config)" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="max_epochs: 1 -> 2"):
        assert main([*TINY, f"trainer.out_dir={out}", "trainer.seed=1", "trainer.max_epochs=2", "--resume",
                     "--quiet"]) == 0
    with open(out / "metrics.csv", newline="") as f:
        assert [row["epoch"] for row in csv.DictReader(f) if row.get("train_loss")] == ["1", "2"]  # continued
    assert main([*TINY, f"trainer.out_dir={out}", "--resume", "--overwrite"]) == 2
    assert "pass one of them" in capsys.readouterr().err
    assert main(["run", "--resume", "task=text", f"out_dir={tmp_path / 'job'}"]) == 2
    assert "cannot continue yet" in capsys.readouterr().err
