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
    # int8-static models save as their graph (tests/compress/test_export.py); a graph with a module call is not one
    # quantize makes, and a stored graph cannot hold it
    with pytest.raises(ConfigError, match="calls call_module"):
        save_compressed(CompiledInt8Model(torch.fx.symbolic_trace(mlp(8, [4], 2))), tmp_path / "static.safetensors")


class _Marker:
    """A pickle payload: unpickling it creates a file (what a hostile file would do instead)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _with_info(path, tensors, info):
    """A compressed file holding ``tensors`` and ``info``, its sha256 recomputed (as an attacker can)."""
    from warmstart.checkpoint import tensors_checksum

    return save_weights(path, tensors, {"compressed": {**info, "sha256": tensors_checksum(tensors)}})


def test_an_int8_file_holding_a_torch_export_program_with_a_pickle_payload_runs_nothing(tmp_path):
    """Issue 37: torch.export.load retries weights_only=False, so a payload in the program's sample inputs ran."""
    import io
    import zipfile

    program = torch.export.export(mlp(8, [4], 2).eval(), (torch.randn(2, 8),))
    archive = io.BytesIO()
    torch.export.save(program, archive)
    crafted = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(archive.getvalue())) as source, zipfile.ZipFile(crafted, "w") as target:
        for name in source.namelist():
            data = source.read(name)
            if name.endswith("sample_inputs/model.pt"):
                payload = io.BytesIO()
                torch.save(_Marker(tmp_path / "ran"), payload)  # what torch.load(weights_only=False) runs
                data = payload.getvalue()
            target.writestr(name, data)
    tensors = {"program::pt2": torch.frombuffer(bytearray(crafted.getvalue()), dtype=torch.uint8)}
    info = {"format": "warmstart-compressed-1", "record": {"quantized": {"mode": "int8-static"}}, "program": "torch.export"}
    path = _with_info(tmp_path / "int8.safetensors", tensors, info)
    with pytest.raises(CheckpointError, match="torch.export program.*no longer reads it"):
        load_compressed(path, mlp(8, [4], 2))
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("target, problem", [("builtins.eval", "outside the tensor operators"),
                                             ("os.system.default", "outside the tensor operators"),
                                             ("aten.no_such_op.default", "which this torch does not have")])
def test_a_stored_graph_may_call_only_tensor_operators(tmp_path, target, problem):
    nodes = [{"op": "placeholder", "name": "x", "target": None, "args": {"tuple": []}, "kwargs": {"dict": {}}},
             {"op": "call_function", "name": "y", "target": target, "args": {"tuple": [{"node": "x"}]},
              "kwargs": {"dict": {}}},
             {"op": "output", "name": "output", "target": None, "args": {"tuple": [{"tuple": [{"node": "y"}]}]},
              "kwargs": {"dict": {}}}]
    info = {"format": "warmstart-compressed-1", "record": {"quantized": {"mode": "int8-static"}},
            "program": "warmstart-graph-1", "graph": {"nodes": nodes, "input_shapes": [None], "input_dtypes": [None],
                                                      "single_output": True}}
    path = _with_info(tmp_path / "int8.safetensors", {"graph::unused": torch.zeros(1)}, info)
    with pytest.raises(CheckpointError, match=problem):
        load_compressed(path, mlp(8, [4], 2))


def test_a_compressed_file_without_its_checksum_is_refused(tmp_path):
    from warmstart.checkpoint import load_weights as read

    path = save_compressed(prune(mlp(16, [8], 2), torch.randn(2, 16), ratio=0.5)[0], tmp_path / "pruned.safetensors")
    tensors, metadata = read(path)
    del metadata["compressed"]["sha256"]
    save_weights(path, tensors, metadata)
    with pytest.raises(CheckpointError, match="no checksum"):
        load_compressed(path, mlp(16, [8], 2))
