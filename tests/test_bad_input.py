"""Every user mistake gets one clear error of the library's own types: input -> exception type and a phrase.

A new bad input is one line in ``LIBRARY`` (the Python API) or ``COMMAND_LINE`` (the ``warmstart`` command,
which prints one line on stderr and exits with status 2, no traceback).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from conftest import make_dataset, make_mlp
from torch.utils.data import DataLoader, TensorDataset

import warmstart as ws
from warmstart.cli import main
from warmstart.config import load_config
from warmstart.data import InMemoryLoader
from warmstart.distill import DistillTrainer
from warmstart.errors import CheckpointError, ConfigError, DataError, NonFiniteLossError
from warmstart.finetune import FinetuneTrainer, load_pretrained


def _fit(model=None, labels=None, **options):
    data = make_dataset(n=64)
    if labels is not None:
        data = TensorDataset(data.tensors[0], labels)
    ws.Trainer(model or make_mlp(), progress=False, **options).fit(DataLoader(data, batch_size=8))


def _late_label():
    labels = make_dataset(n=64).tensors[1].clone()
    labels[50] = 9
    return labels


def _probe_with_bad_labels():
    data = make_dataset(n=64)
    labels = data.tensors[1].clone()
    labels[60] = 5
    FinetuneTrainer(make_mlp(), strategy="linear_probe", progress=False, log_every=100).fit(
        InMemoryLoader(data.tensors[0], labels, batch_size=8))


def _frozen_model():
    model = make_mlp()
    model.requires_grad_(False)
    ws.Trainer(model)


def _same_teacher_and_student():
    model = make_mlp()
    DistillTrainer(model, model)


def _malformed_metadata(tmp_path: Path):
    path = tmp_path / "w.safetensors"
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                         "__metadata__": {"warmstart": "{not json"}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\x00\x00\x80\x3f")
    ws.load_weights(path)


def _listed_metadata(tmp_path: Path):
    path = tmp_path / "w.safetensors"
    header = json.dumps({"0.weight": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                         "__metadata__": {"warmstart": "[1, 2]"}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\x00\x00\x80\x3f")
    load_pretrained(make_mlp(), path)


def _damaged_cache(tmp_path: Path):
    path = tmp_path / "cache.npy"
    data = InMemoryLoader(make_dataset(n=32).tensors[0], make_dataset(n=32).tensors[1], batch_size=8)
    DistillTrainer(make_mlp(), make_mlp(), cache_teacher=True, cache_path=str(path), progress=False).fit(data)
    path.write_bytes(b"garbage")
    DistillTrainer(make_mlp(), make_mlp(), cache_teacher=True, cache_path=str(path), progress=False).fit(data)


def _nan_evaluation():
    ws.Trainer(make_mlp(), progress=False).evaluate([(torch.full((4, 10), float("nan")), torch.zeros(4).long())])


LIBRARY = [
    ("labels out of range, first batch", lambda tmp: _fit(labels=torch.arange(64) % 5), DataError,
     "labels must be in [0, 3)"),
    ("labels out of range, a later batch", lambda tmp: _fit(labels=_late_label(), log_every=100), DataError,
     "a batch has label 9"),
    ("negative labels", lambda tmp: _fit(labels=-(torch.arange(64) % 2)), DataError, "cannot be negative"),
    ("labels out of range, linear probe", lambda tmp: _probe_with_bad_labels(), DataError, "a batch has label 5"),
    ("max_steps=0", lambda tmp: ws.Trainer(make_mlp(), max_steps=0), ConfigError, "'max_steps' must be >= 1"),
    ("model with no trainable parameters", lambda tmp: _frozen_model(), ConfigError, "has no trainable parameters"),
    ("betas=[0.9]", lambda tmp: ws.Trainer(make_mlp(), {"name": "adam", "betas": [0.9]}), ConfigError,
     "betas must be two numbers"),
    ("unknown optimizer", lambda tmp: ws.Trainer(make_mlp(), {"name": "adamm"}), ConfigError, "did you mean 'adam'"),
    ("unknown device", lambda tmp: ws.Trainer(make_mlp(), device="gpu"), ConfigError, "unknown device 'gpu'"),
    ("cuda without a GPU", lambda tmp: ws.Trainer(make_mlp(), device="cuda") if not torch.cuda.is_available()
     else ws.Trainer(make_mlp(), device="cuda:99"), ConfigError, "cuda"),
    ("unknown precision", lambda tmp: ws.Trainer(make_mlp(), precision="64"), ConfigError, "unknown precision '64'"),
    ("teacher=[]", lambda tmp: DistillTrainer(make_mlp(), []), ConfigError, "teacher is an empty list"),
    ("same teacher and student", lambda tmp: _same_teacher_and_student(), ConfigError, "also given as the teacher"),
    ("a directory as cache_path", lambda tmp: DistillTrainer(make_mlp(), make_mlp(), cache_teacher=True,
     cache_path=str(tmp), progress=False).fit(InMemoryLoader(torch.randn(8, 10), torch.zeros(8).long())),
     ConfigError, "is a directory"),
    ("damaged cache file", _damaged_cache, CheckpointError, "to rebuild the cache"),
    ("malformed safetensors metadata", _malformed_metadata, CheckpointError, "malformed warmstart metadata"),
    ("metadata that is not an object", _listed_metadata, CheckpointError, "malformed warmstart metadata"),
    ("non-finite evaluation", lambda tmp: _nan_evaluation(), NonFiniteLossError, "outputs or loss are NaN/inf"),
    ("config path that is a directory", lambda tmp: load_config(ws.TrainerConfig, tmp), ConfigError,
     "is a directory, not a YAML file"),
]


@pytest.mark.parametrize(("case", "attempt", "error", "phrase"), LIBRARY, ids=[row[0] for row in LIBRARY])
def test_library_bad_input(tmp_path, case, attempt, error, phrase):
    with pytest.raises(error) as raised:
        attempt(tmp_path)
    assert phrase in str(raised.value)


def test_unquoted_yaml_precision_is_accepted(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("precision: 32\n")
    assert load_config(ws.TrainerConfig, config).precision == "32"
    config.write_text("precision: 16\n")
    assert load_config(ws.TrainerConfig, config).precision == "16"


COMMAND_LINE = [
    ("override syntax", ["pretrain", "trainer.max_epochs=[1"], "is not valid YAML"),
    ("!!python tag in an override", ["pretrain", "trainer.max_epochs=!!python/object/apply:os.system [ls]"],
     "YAML tags ('!!python/object/apply:os.system') are not allowed"),
    ("unknown model argument", ["pretrain", "data.name=fake", "model.args.foo=1", "trainer.out_dir=null"],
     "takes no argument 'foo'; its arguments are: num_classes, in_channels, width, dropout"),
    ("impossible data shape", ["pretrain", "data.name=fake", "data.fake_shape=[1, 2, 2]", "model.name=lenet",
                               "trainer.out_dir=null"], "cannot take this data's inputs of shape (1, 2, 2)"),
    ("fake_classes=0", ["pretrain", "data.name=fake", "data.fake_classes=0"], "data.fake_classes must be >= 1"),
    ("digits size", ["finetune", "data.size=12"], "must be 8 (the original images) or 28"),
    ("unknown device", ["pretrain", "trainer.device=gpu", "trainer.out_dir=null"], "unknown device 'gpu'"),
    ("precision 16 on the CPU", ["pretrain", "trainer.precision=16", "trainer.device=cpu", "data.name=fake",
                                 "trainer.out_dir=null"], "needs a GPU; on the CPU use precision='bf16'"),
    ("near-miss key", ["run", "pretrain.epochs=2"], "did you mean 'pretrain.trainer.max_epochs'?"),
]


@pytest.mark.parametrize(("case", "argv", "phrase"), COMMAND_LINE, ids=[row[0] for row in COMMAND_LINE])
def test_command_line_bad_input(case, argv, phrase, capsys):
    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert phrase in err and "Traceback" not in err and err.count("\n") == 1, err


def test_command_line_out_dir_problems(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["pretrain", "data.name=fake", f"trainer.out_dir={blocker}", "--quiet"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert main(["pretrain", str(tmp_path), "--quiet"]) == 2
    assert "is a directory, not a YAML file" in capsys.readouterr().err
