"""int8 quantization: outputs close to float, the float model untouched, auto by measurement, bad input."""

from __future__ import annotations

import platform

import pytest
import torch
from torch import nn

from warmstart.compress import CompiledInt8Model, count_parameters, quantize
from warmstart.errors import ConfigError
from warmstart.models import mlp, small_cnn

X = torch.randn(32, 64)


def trained_mlp() -> nn.Module:
    """An MLP fitted a few steps to a fixed target, so its logits have a realistic scale (about +-5)."""
    torch.manual_seed(0)
    model = mlp(64, [128], 10)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    labels = X[:, :10].argmax(1)
    for _ in range(30):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(X), labels).backward()
        optimizer.step()
    return model.eval()


@pytest.mark.parametrize("mode", ["int8-weight", "int8-dynamic", "int8-dynamic-eager"])
def test_int8_outputs_are_close_to_float(mode):
    model = trained_mlp()
    weight = model.fc1[0].weight.clone()
    quantized, report = quantize(model, mode, X, repeats=3)
    with torch.no_grad():
        reference, output = model(X), quantized(X)
    # tolerance: 2% of the largest logit (per-row int8 weights; dynamic int8 activations add a little)
    assert (output - reference).abs().max() <= 0.02 * reference.abs().max()
    assert report.max_abs_error == pytest.approx(float((output - reference).abs().max()))
    assert torch.equal(model.fc1[0].weight, weight) and type(model.fc1[0].weight) is nn.Parameter
    assert report.layers == ["fc1.0", "head"] and report.bytes_after < report.bytes_before / 3.5
    assert set(report.latency_ms) == {"fp32", mode}
    assert count_parameters(quantized) == count_parameters(model)  # packed int8 weights count too


def test_torchao_modes_leave_convolutions_in_float_and_say_so():
    quantized, report = quantize(small_cnn(width=4), "int8-weight")
    assert report.layers == ["head"] and len(report.skipped) == 3 and "int8-static" in report.skipped[0]
    assert report.latency_ms == {} and report.max_abs_error is None


def test_auto_picks_by_measurement_and_explains_its_choice():
    model = trained_mlp()
    quantized, report = quantize(model, "auto", X, candidates=["int8-weight", "int8-dynamic"], repeats=5)
    assert set(report.latency_ms) == {"fp32", "int8-weight", "int8-dynamic"}
    fastest = min(["int8-weight", "int8-dynamic"], key=report.latency_ms.get)
    if report.latency_ms["fp32"] / report.latency_ms[fastest] >= 1.1:
        assert report.mode == fastest and "faster than fp32" in report.note
    else:  # not faster here: the float model comes back, unchanged, and the note says so
        assert report.mode == "fp32" and "float model is returned" in report.note
        assert all(type(p) is nn.Parameter for p in quantized.parameters())


@pytest.mark.slow
@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="the X86InductorQuantizer needs x86")
def test_int8_static_is_close_to_float_and_takes_other_batch_sizes():
    model = trained_mlp()
    quantized, report = quantize(model, "int8-static", X, calibration=[X, X[:16]], repeats=3)
    assert isinstance(quantized, CompiledInt8Model)
    with torch.no_grad():
        reference = model(X)
        assert (quantized(X) - reference).abs().max() <= 0.05 * reference.abs().max()
        assert quantized(X[:5]).shape == (5, 10)
    assert count_parameters(quantized) == count_parameters(model)  # the graph's int8 constants count


def test_unknown_mode_and_missing_example_input_are_refused():
    with pytest.raises(ConfigError, match="did you mean 'int8-weight'"):
        quantize(mlp(8, [4], 2), "int8-weights")
    with pytest.raises(ConfigError, match="needs example_input"):
        quantize(mlp(8, [4], 2), "auto")
    with pytest.raises(ConfigError, match="example batch of at least 2"):
        quantize(mlp(8, [4], 2), "int8-static", torch.randn(1, 8))
    with pytest.raises(ConfigError, match="unknown quantization mode 'fp16'"):
        quantize(mlp(8, [4], 2), "auto", torch.randn(2, 8), candidates=["fp16"])


def test_model_without_supported_layers_is_refused():
    convs = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3))
    with pytest.raises(ConfigError, match="no layer that mode 'int8-weight' quantizes.*Conv2d.*int8-static"):
        quantize(convs, "int8-weight")
    with pytest.raises(ConfigError, match="no layer that mode 'int8-dynamic' quantizes"):
        quantize(nn.Sequential(nn.ReLU()), "int8-dynamic")


def test_an_eager_int8_model_is_refused_by_save_compressed(tmp_path):
    from warmstart.compress import save_compressed

    quantized, report = quantize(trained_mlp(), "int8-dynamic-eager")
    assert report.mode == "int8-dynamic-eager"
    with pytest.raises(ConfigError, match="prepacked kernels that safetensors cannot store.*again after loading"):
        save_compressed(quantized, tmp_path / "eager.safetensors")
    assert not (tmp_path / "eager.safetensors").exists()
