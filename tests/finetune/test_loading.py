"""load_pretrained: every backbone weight or a clear error; the resized head skipped; wrapper prefixes stripped."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import resnet18, resnet34

import warmstart as ws
from warmstart.errors import CheckpointError
from warmstart.finetune import load_pretrained, swap_head
from warmstart.models import small_cnn
from warmstart.pretrain import save_pretrained


def test_a_pretrained_run_loads_into_a_model_with_a_new_head(tmp_path):
    torch.manual_seed(0)
    source = small_cnn(num_classes=10, width=4)
    ws.Trainer(source, max_epochs=1, out_dir=str(tmp_path), progress=False).fit(
        [(torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,)))])
    target = small_cnn(num_classes=10, width=4)
    swap_head(target, num_classes=3)
    head_before = target.head.weight.clone()
    report = load_pretrained(target, tmp_path / "last.safetensors")
    assert [k for k, _, _ in report.head_skipped] == ["head.weight", "head.bias"]
    assert report.metadata["num_classes"] == 10 and report.metadata["head"] == "head"
    for key, value in source.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(target.state_dict()[key], value), key
    assert torch.equal(target.head.weight, head_before)
    text = str(report)
    assert "loaded        " in text and "head skipped  head.weight (10, 16) -> (3, 16)" in text
    # the full training checkpoint and a plain .pt state dict work too
    assert load_pretrained(small_cnn(num_classes=3, width=4), tmp_path / "last.pt").loaded == report.loaded
    torch.save(source.state_dict(), tmp_path / "plain.pt")
    assert len(load_pretrained(small_cnn(width=4), tmp_path / "plain.pt").loaded) == len(source.state_dict())


def test_ddp_and_compile_prefixes_are_stripped_and_reported():
    state = {f"module._orig_mod.{k}": v for k, v in resnet18(num_classes=10).state_dict().items()}
    model = resnet18(num_classes=10)
    report = load_pretrained(model, state)
    assert len(report.renamed) == len(state) and not report.head_skipped
    assert "removed prefix 'module._orig_mod.'" in str(report)
    assert torch.equal(model.conv1.weight, state["module._orig_mod.conv1.weight"])


def test_another_architecture_is_refused_with_the_keys(tmp_path):
    save_pretrained(resnet34(num_classes=10), tmp_path / "r34.safetensors")
    # ResNet-18's keys are a subset of ResNet-34's: the extra blocks say it is another architecture
    with pytest.raises(CheckpointError, match=r"cannot load .* into ResNet: 80 backbone weights do not fit "
                                              r"\(layer1.2.bn1.bias: not in the model"):
        load_pretrained(resnet18(num_classes=10), tmp_path / "r34.safetensors")
    report = load_pretrained(resnet18(num_classes=10), tmp_path / "r34.safetensors", ignore_unexpected=True)
    assert len(report.unexpected) == 96 and "unexpected    96" in str(report)
    with pytest.raises(CheckpointError, match="layer1.2.conv1.weight: missing from the weights"):
        load_pretrained(resnet34(num_classes=10), resnet18(num_classes=10).state_dict())
    narrow = small_cnn(width=4).state_dict()
    with pytest.raises(CheckpointError, match=r"block1.0.weight: weights \(4, 1, 3, 3\) vs model \(8, 1, 3, 3\)"):
        load_pretrained(small_cnn(width=8), narrow)
    partial = {k: v for k, v in narrow.items() if not k.startswith("block3")}
    with pytest.raises(CheckpointError, match="block3.0.weight: missing from the weights"):
        load_pretrained(small_cnn(width=4), partial)
    report = load_pretrained(small_cnn(width=4), partial, allow_missing=("block3",))
    assert not any(k.startswith("block3") for k in report.loaded)


def test_files_that_are_not_weights_give_a_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("not weights")
    with pytest.raises(CheckpointError, match="not a weight file"):
        load_pretrained(small_cnn(width=4), tmp_path / "notes.txt")
    path = save_pretrained(small_cnn(width=4), tmp_path / "w.safetensors")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_pretrained(small_cnn(width=4), path)
    with pytest.raises(CheckpointError, match="no weight file"):
        load_pretrained(small_cnn(width=4), tmp_path / "missing.safetensors")
