"""Misuses of warmstart.compress (issue 23): each is done right or refused with a clear ConfigError/CheckpointError."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import warmstart as ws
from warmstart._resume import ResumeChangeWarning
from warmstart.compress import (count_parameters, export, load_compressed, prune, quantize, recover, save_compressed,
                                sparsify, tensor_bytes)
from warmstart.data import InMemoryLoader
from warmstart.errors import CheckpointError, ConfigError, RunExistsError
from warmstart.models import mlp

pytest.importorskip("torch_pruning")
pytest.importorskip("torchao")

X = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
DATA = [(X, torch.arange(8) % 3)] * 2


def _int8(mode: str = "int8-weight") -> nn.Module:
    return quantize(mlp(16, [32], 3), mode, X)[0]


# --- 2: int8 models are not trained (only their biases would be) ---

@pytest.mark.parametrize("mode", ["int8-weight", "int8-dynamic-eager"])
def test_an_int8_model_is_refused_by_the_trainer_and_recover(mode):
    model = _int8(mode)
    with pytest.raises(ConfigError, match=f"cannot train an int8 model .*'{mode}'.*prepare_qat"):
        ws.Trainer(model, max_epochs=1, progress=False)
    with pytest.raises(ConfigError, match="cannot train an int8 model"):
        recover(model, DATA, method="finetune", epochs=1, progress=False)


@pytest.mark.parametrize("action", [lambda m: prune(m, X, 0.3), lambda m: sparsify(m, 0.5),
                                    lambda m: quantize(m, "int8-weight", X)], ids=["prune", "sparsify", "quantize"])
def test_an_int8_model_is_not_compressed_again(action):
    with pytest.raises(ConfigError, match="an int8 model .*the float model"):
        action(_int8())


# --- 3: tied weights stay tied, and are counted once ---

class _TiedModel(nn.Module):
    """An embedding whose weight is also the output layer's; ``residual`` couples the tied width to both ends."""

    def __init__(self, residual: bool):
        super().__init__()
        self.residual = residual
        self.embed = nn.Embedding(20, 16)
        self.body = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16))
        self.out = nn.Linear(16, 20, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, tokens):
        hidden = self.embed(tokens)
        return self.out(self.body(hidden) + (hidden if self.residual else 0))


TOKENS = torch.randint(0, 20, (2, 5), generator=torch.Generator().manual_seed(0))


def test_pruning_keeps_tied_weights_tied_and_counts_them_once():
    torch.manual_seed(0)
    pruned, report = prune(_TiedModel(residual=True), TOKENS, 0.3, ignore=["out"])
    assert pruned.out.weight is pruned.embed.weight and pruned.embed.weight.shape[1] < 16
    unique = sum(p.numel() for p in {id(p): p for p in pruned.parameters()}.values())
    assert report.params_after == unique == count_parameters(pruned)
    assert pruned(TOKENS).shape == (2, 5, 20)


def test_pruning_that_would_untie_weights_is_refused_naming_the_tie():
    with pytest.raises(ConfigError, match=r"untie embed.weight and out.weight.*ignore= .*\(body.2\)"):
        prune(_TiedModel(residual=False), TOKENS, 0.3, ignore=["out"])
    pruned, _ = prune(_TiedModel(residual=False), TOKENS, 0.3, ignore=["out", "body.2"])  # the way round it names
    assert pruned.out.weight is pruned.embed.weight


# --- 4, 5, 10, 12 ---

def test_empty_calibration_is_refused_not_replaced_by_the_example():
    empty = DataLoader(TensorDataset(torch.randn(0, 16)), batch_size=4)
    with pytest.raises(ConfigError, match="calibration is empty"):
        quantize(mlp(16, [32], 3), "int8-static", X, calibration=empty)


def test_recover_refuses_epochs_and_max_epochs_together():
    with pytest.raises(ConfigError, match="both epochs=1 and max_epochs=3"):
        recover(mlp(16, [8], 3), DATA, method="finetune", epochs=1, max_epochs=3, progress=False)
    assert len(recover(mlp(16, [8], 3), DATA, method="finetune", max_epochs=2, progress=False).history) == 2


def test_auto_recovery_records_its_choice_and_resumes_it_without_new_trials(tmp_path, monkeypatch):
    from warmstart.selection import _run as selection_run

    teacher = mlp(16, [32], 3)
    x, y = torch.randn(24, 16, generator=torch.Generator().manual_seed(1)), torch.arange(24) % 3
    labelled = InMemoryLoader(x, y, batch_size=8, shuffle=True)
    options = {"teacher": teacher, "method": "auto", "unlabelled": torch.randn(16, 16), "out_dir": tmp_path,
               "progress": False, "seed": 0, "selection": {"max_detectable": None, "min_trial_steps": 1}}
    result = recover(mlp(16, [8], 3), labelled, epochs=3, **options)
    record = json.loads((tmp_path / "selection.json").read_text())
    chosen = record["selection"]
    assert list(chosen["scores"]) == ["finetune", "distill", "distill_unlabelled", "finetune_same_steps"]
    assert chosen["choice"] == result.method and chosen["validation"] == "5-fold x 1 cross-validation on 24 labels"
    assert all(len(score["folds"]) == 5 for score in chosen["scores"].values()) and len(record["trials"]) == 20
    saved = load_file(tmp_path / "last.safetensors")  # the final run's files: the returned model
    assert all(torch.equal(saved[key], value) for key, value in result.model.state_dict().items())
    first = (tmp_path / "last.safetensors").read_bytes()

    def no_trials(*args, **kwargs):
        raise AssertionError("trials ran")

    monkeypatch.setattr(selection_run, "select", no_trials)
    with pytest.raises(RunExistsError, match="holds an earlier run"):  # refused before any trial
        recover(mlp(16, [8], 3), labelled, epochs=3, **options)
    assert (tmp_path / "last.safetensors").read_bytes() == first
    with pytest.warns(ResumeChangeWarning):  # max_epochs 3 -> 4: the recorded choice trains one epoch more
        resumed = recover(mlp(16, [8], 3), labelled, epochs=4, resume="last", **options)
    assert resumed.method == result.method and resumed.selection.to_dict() == chosen
    assert [row["epoch"] for row in resumed.history] == [1, 2, 3, 4]  # the run continued, not restarted
    with pytest.raises(ConfigError, match="planned otherwise.*candidates: \\['finetune', 'distill', 'distill_unl"):
        recover(mlp(16, [8], 3), labelled, epochs=3, resume="last", **{**options, "unlabelled": None})


def test_an_int8_static_model_holds_only_what_its_graph_reads():
    torch.manual_seed(0)
    model = mlp(64, [32], 10)
    quantized, report = quantize(model, "int8-static", torch.randn(8, 64))
    held = sum(t.numel() * t.element_size() for t in quantized.state_dict().values())
    assert held == report.bytes_after == tensor_bytes(quantized) < report.bytes_before / 2
    assert not any(p.requires_grad for p in quantized.parameters())
    with torch.no_grad():
        assert (quantized(X.repeat(1, 4)) - model.eval()(X.repeat(1, 4))).abs().max() < 0.1


# --- unclear errors made clear ---

class _AppliedTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.shared = nn.Linear(16, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.shared(torch.relu(self.shared(x))))


class _DepthwiseTimesTwo(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.depthwise = nn.Conv2d(8, 16, 3, padding=1, groups=8)
        self.mix = nn.Conv2d(16, 8, 1)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.mix(self.depthwise(self.stem(x))).mean((2, 3)))


def test_a_layer_applied_twice_is_named_not_the_example_input():
    with pytest.raises(ConfigError, match=r"'shared' runs 2 times.*ignore=\['shared'\]"):
        prune(_AppliedTwice(), X, 0.3)


def test_a_depthwise_conv_with_a_channel_multiplier_is_named():
    images = torch.randn(2, 3, 8, 8)
    with pytest.raises(ConfigError, match=r"'depthwise' is a depthwise convolution with channel multiplier 2.*"
                                          r"ignore=\['depthwise', 'stem'\]"):
        prune(_DepthwiseTimesTwo(), images, 0.2)
    pruned, _ = prune(_DepthwiseTimesTwo(), images, 0.2, ignore=["depthwise", "stem"])
    assert pruned(images).shape == (2, 3)


def test_masks_attached_are_named():
    masked, _ = sparsify(mlp(16, [32], 3), 0.5, keep_masks=True)
    with pytest.raises(ConfigError, match="pruning masks attached .*remove_masks"):
        prune(masked, X, 0.3)


def test_frozen_layers_and_attention_are_pruned():
    frozen = mlp(16, [32, 32], 3).requires_grad_(False)
    pruned, report = prune(frozen, X, 0.3)
    assert report.params_after < report.params_before and not any(p.requires_grad for p in pruned.parameters())

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(16, 16)
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
            self.head = nn.Linear(16, 3)

        def forward(self, x):
            x = self.embed(x)
            return self.head(self.attn(x, x, x)[0].mean(1))

    tokens = torch.randn(2, 5, 16)
    pruned, report = prune(Attention(), tokens, 0.3)  # attention narrows as one unit (torch-pruning)
    assert report.params_after < report.params_before and pruned(tokens).shape == (2, 3)


@pytest.mark.parametrize(("call", "message"), [
    (lambda: prune(mlp(16, [32], 3), X, "0.5"), "ratio is the share .* got '0.5' \\(a str\\)"),
    (lambda: prune(mlp(16, [32], 3), X, 0.5, steps=2.5), "steps .* whole number >= 1; got 2.5"),
    (lambda: prune(mlp(16, [32], 3), X, 0.5, round_to=64), "round_to=64 .* \\(the widest, 'fc1.0', has 32 outputs\\)"),
    (lambda: quantize(mlp(16, [32], 3), None, X), "mode must be a string"),
    (lambda: sparsify(mlp(16, [32], 3), "0.5"), "amount is the share .* got '0.5'"),
], ids=["ratio-str", "steps-float", "round_to-too-wide", "mode-none", "amount-str"])
def test_option_types_are_checked(call, message):
    with pytest.raises(ConfigError, match=message):
        call()


# --- 6: a damaged compressed file is noticed ---

def test_flipped_bytes_in_a_compressed_file_are_refused(tmp_path):
    torch.manual_seed(0)
    pruned, _ = prune(mlp(16, [32], 3), X, 0.5)
    path = save_compressed(quantize(pruned, "int8-weight", X)[0], tmp_path / "model.safetensors")
    assert load_compressed(path, mlp(16, [32], 3)) is not None  # intact: loads
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # the last bytes are tensor data (the header comes first)
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors' is damaged: its contents do not match the sha256"):
        load_compressed(path, mlp(16, [32], 3))


def test_an_example_input_without_samples_is_named():
    with pytest.raises(ConfigError, match=r"example_input must hold at least one sample.*\(0, 16\)"):
        prune(mlp(16, [32], 3), X[:0], 0.5)  # was a ZeroDivisionError inside torch-pruning's MAC counter


def test_tied_weights_are_sized_once():
    model = _TiedModel(residual=True)
    once = sum(p.numel() * p.element_size() for p in model.parameters())  # parameters() lists a shared one once
    assert tensor_bytes(model) == once < sum(t.numel() * t.element_size() for t in model.state_dict().values())


def test_a_pruned_tied_model_loads_back_tied(tmp_path):
    torch.manual_seed(0)
    pruned, _ = prune(_TiedModel(residual=True), TOKENS, 0.3, ignore=["out"])
    loaded = load_compressed(save_compressed(pruned, tmp_path / "tied.safetensors"), _TiedModel(residual=True))
    assert loaded.out.weight is loaded.embed.weight and torch.equal(loaded(TOKENS), pruned(TOKENS))


def test_a_tuple_a_folder_and_calibration_of_another_shape_are_named(tmp_path):
    """Issue 37: save_compressed(convert_qat(...)) with the returned tuple, export to a folder and an onnx-int8
    calibration of the wrong shape (ONNX Runtime's message) were unclear errors."""
    quantized = quantize(mlp(16, [32], 3), "int8-weight", X)
    with pytest.raises(ConfigError, match=r"save_compressed got a tuple, not a model.*model, report = "):
        save_compressed(quantized, tmp_path / "m.safetensors")
    with pytest.raises(ConfigError, match=r"export got a tuple, not a model"):
        export(quantized, X, tmp_path / "m.pt2")
    with pytest.raises(ConfigError, match=r"writes one file, and '.*' is a folder.*model.pt2"):
        export(mlp(16, [32], 3), X, tmp_path)
    pytest.importorskip("onnxruntime")
    with pytest.raises(ConfigError, match=r"calibration batch has samples of shape \(8,\), the example input \(16,\)"):
        export(mlp(16, [32], 3), X, tmp_path / "m.onnx", format="onnx-int8", calibration=[torch.randn(4, 8)])
