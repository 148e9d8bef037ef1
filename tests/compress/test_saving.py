"""Saving and loading compressed models: identical outputs, real size savings, clear refusals."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import warmstart as ws
from warmstart.checkpoint import load_weights, save_weights
from warmstart.compress import (CompiledInt8Model, describe_compressed, load_compressed, prune, quantize,
                                remove_masks, save_compressed, sparsify)
from warmstart.errors import CheckpointError, ConfigError
from warmstart.finetune import load_pretrained
from warmstart.models import mlp, small_cnn

IMAGE = torch.randn(4, 1, 28, 28)


def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def test_pruned_model_round_trip_rebuilds_the_architecture(tmp_path):
    pruned, report = prune(small_cnn(width=8), IMAGE, ratio=0.5)
    save_compressed(pruned, tmp_path / "pruned.safetensors")
    loaded = load_compressed(tmp_path / "pruned.safetensors", small_cnn(width=8))
    assert torch.equal(outputs(loaded, IMAGE), outputs(pruned, IMAGE))
    assert loaded.block2[0].out_channels == pruned.block2[0].out_channels < 16
    assert loaded.block2[1].num_features == pruned.block2[0].out_channels


@pytest.mark.parametrize("mode", ["int8-weight", "int8-dynamic"])
def test_int8_round_trip_gives_the_same_outputs_and_is_four_times_smaller(tmp_path, mode):
    model = mlp(784, [256], 10)
    quantized, _ = quantize(model, mode)
    save_compressed(quantized, tmp_path / "int8.safetensors")
    save_weights(tmp_path / "float.safetensors", model.state_dict())
    loaded = load_compressed(tmp_path / "int8.safetensors", mlp(784, [256], 10))
    assert torch.equal(outputs(loaded, IMAGE), outputs(quantized, IMAGE))
    ratio = (tmp_path / "float.safetensors").stat().st_size / (tmp_path / "int8.safetensors").stat().st_size
    assert ratio > 3.5


def test_pruned_and_quantized_round_trip(tmp_path):
    pruned, _ = prune(mlp(784, [64, 64], 10), IMAGE, ratio=0.5)
    quantized, _ = quantize(pruned, "int8-weight")
    save_compressed(quantized, tmp_path / "both.safetensors")
    loaded = load_compressed(tmp_path / "both.safetensors", mlp(784, [64, 64], 10))
    assert torch.equal(outputs(loaded, IMAGE), outputs(quantized, IMAGE))


def test_sparse_weights_are_stored_as_mask_and_values(tmp_path):
    model = mlp(784, [256], 10)
    sparse, _ = sparsify(model, amount=0.9, global_pruning=False)
    save_compressed(sparse, tmp_path / "sparse.safetensors")
    save_compressed(model, tmp_path / "dense.safetensors")
    loaded = load_compressed(tmp_path / "sparse.safetensors", mlp(784, [256], 10))
    assert torch.equal(outputs(loaded, IMAGE), outputs(sparse, IMAGE))
    ratio = (tmp_path / "dense.safetensors").stat().st_size / (tmp_path / "sparse.safetensors").stat().st_size
    assert ratio > 5  # 1/32 + 10% of the float32 bytes: about 7.6x smaller


def test_compressed_checkpoint_describes_itself_to_float_loaders(tmp_path):
    pruned, report = prune(mlp(784, [64], 10), IMAGE, ratio=0.5)
    quantized, _ = quantize(pruned, "int8-weight")
    save_compressed(quantized, tmp_path / "both.safetensors")
    message = describe_compressed(load_weights(tmp_path / "both.safetensors")[1])
    assert message.startswith("this checkpoint holds an int8-quantized (int8-weight) and pruned (")
    assert f"{report.params_after:,} of {report.params_before:,} parameters" in message
    assert "warmstart.compress.load_compressed" in message
    assert describe_compressed({}) is None
    with pytest.raises(CheckpointError, match=r"int8-quantized .* load it with warmstart.compress.load_compressed"):
        load_pretrained(mlp(784, [64], 10), tmp_path / "both.safetensors")  # not a shape-mismatch traceback
    with pytest.raises(ConfigError, match=r"was pruned and quantized by warmstart.compress.*save_compressed"):
        ws.pretrain.save_pretrained(quantized, tmp_path / "plain.safetensors")  # it would not load back
    assert not (tmp_path / "plain.safetensors").exists()


def test_plain_weights_and_other_architectures_are_refused(tmp_path):
    save_weights(tmp_path / "float.safetensors", mlp(784, [64], 10).state_dict())
    with pytest.raises(CheckpointError, match="plain weights, not a model saved by save_compressed"):
        load_compressed(tmp_path / "float.safetensors", mlp(784, [64], 10))
    pruned, _ = prune(mlp(784, [64], 10), IMAGE, ratio=0.5)
    save_compressed(pruned, tmp_path / "pruned.safetensors")
    with pytest.raises(CheckpointError, match="another architecture"):
        load_compressed(tmp_path / "pruned.safetensors", mlp(784, [64, 64], 10))


def test_quantized_template_masks_and_an_untraced_int8_graph_are_refused(tmp_path):
    quantized, _ = quantize(mlp(784, [64], 10), "int8-weight")
    save_compressed(quantized, tmp_path / "int8.safetensors")
    with pytest.raises(ConfigError, match="needs a float model of the original architecture"):
        load_compressed(tmp_path / "int8.safetensors", quantized)
    masked, _ = sparsify(mlp(784, [64], 10), amount=0.5, keep_masks=True)
    with pytest.raises(ConfigError, match="remove_masks"):
        save_compressed(masked, tmp_path / "masked.safetensors")
    save_compressed(remove_masks(masked), tmp_path / "masked.safetensors")
    # int8-static models save through their torch.export program (tests/compress/test_export.py); a graph that
    # torch.export did not make has no input shapes to export it again with
    with pytest.raises(ConfigError, match="records no input shapes"):
        save_compressed(CompiledInt8Model(torch.fx.symbolic_trace(mlp(8, [4], 2))), tmp_path / "static.safetensors")
