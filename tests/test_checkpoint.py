"""Checkpoint files: atomic writes, safe loading, clear errors for corrupt or foreign files."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from conftest import make_dataset, make_mlp
from safetensors.torch import load_file
from torch.utils.data import DataLoader

import warmstart as ws
from warmstart.checkpoint import atomic_path, load_checkpoint, load_weights, save_checkpoint, save_weights
from warmstart.errors import CheckpointError


def test_a_crash_during_a_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1, "w": torch.ones(3)})

    def crash_halfway(obj, f, *args, **kwargs):
        with open(f, "wb") as handle:
            handle.write(b"PK\x03\x04 half a zip file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_halfway)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"epoch": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    state = load_checkpoint(path)
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_atomic_path_replaces_only_on_success(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("new")
        raise RuntimeError
    assert target.read_text() == "old"
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"


def test_trainer_checkpoints_load_without_unpickling_objects(tmp_path):
    model = make_mlp()
    trainer = ws.Trainer(model, {"name": "sgd", "lr": 0.1, "momentum": 0.9}, max_epochs=1, out_dir=str(tmp_path),
                         progress=False, scheduler={"name": "step", "step_size": 1})
    trainer.fit(DataLoader(make_dataset(), batch_size=16))
    state = torch.load(tmp_path / "last.pt", weights_only=True)  # raises if anything needs unpickling
    assert {"model", "optimizer", "scheduler", "rng", "epoch", "global_step", "config", "callbacks"} <= set(state)
    assert state["config"]["trainer"]["out_dir"] == str(tmp_path)
    weights = load_file(str(tmp_path / "last.safetensors"))
    assert torch.equal(weights["0.weight"], model[0].weight.detach())
    tensors, metadata = load_weights(tmp_path / "last.safetensors")
    assert metadata["num_classes"] == 3 and metadata["head"] == "3"
    assert metadata["config"]["trainer"]["max_epochs"] == 1
    assert (tmp_path / "config.yaml").read_text().startswith("trainer:")


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04truncated"])
def test_corrupt_or_truncated_files_give_a_clear_error(tmp_path, content):
    path = tmp_path / "last.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="truncated, corrupt"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="truncated, corrupt"):
        load_weights(path)


def test_truncated_safetensors_and_pickled_objects_are_refused(tmp_path, capfd):
    good = save_weights(tmp_path / "w.safetensors", {"w": torch.randn(100)})
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-50])
    with pytest.raises(CheckpointError, match="truncated or corrupt safetensors"):
        load_weights(cut)
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"w": _Evil()}, protocol=2))
    for load in (load_weights, load_checkpoint):  # named as what it is, not as damage; torch's hint not repeated
        with pytest.raises(CheckpointError, match=r"holds pickled Python objects \(.*print\).*will not run it") as err:
            load(evil)
        assert "weights_only=False" not in str(err.value) and "corrupt" not in str(err.value)
    assert "never run" not in capfd.readouterr().out


def test_load_weights_accepts_state_dicts_files_and_checkpoints(tmp_path):
    model = make_mlp()
    sd = model.state_dict()
    torch.save(sd, tmp_path / "plain.pt")
    save_checkpoint(tmp_path / "ckpt.pt", {"model": sd, "metadata": {"num_classes": 3}})
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "lightning.ckpt")
    for source in (sd, tmp_path / "plain.pt", tmp_path / "ckpt.pt", tmp_path / "lightning.ckpt"):
        tensors, _ = load_weights(source)
        assert all(torch.equal(tensors[k], sd[k]) for k in sd)
    assert load_weights(tmp_path / "ckpt.pt")[1] == {"num_classes": 3}
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_weights(tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="no weight file"):
        load_weights(tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match="not a warmstart training checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")


def test_tied_weights_are_saved_apart(tmp_path):
    a = torch.nn.Linear(4, 4)
    sd = {"a": a.weight, "b": a.weight}  # the same tensor twice, as tied embeddings are
    save_weights(tmp_path / "tied.safetensors", sd)
    tensors, _ = load_weights(tmp_path / "tied.safetensors")
    assert torch.equal(tensors["a"], tensors["b"])


def test_a_full_disk_while_checkpointing_says_so_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """Issue 23: a full disk raised torch's '[enforce fail at inline_container.cc]' from inside the Trainer."""
    import errno
    import shutil
    import types

    real_save, writes = torch.save, []

    def full_after_the_first(obj, f, *args, **kwargs):
        writes.append(f)
        if len(writes) == 1:
            return real_save(obj, f, *args, **kwargs)
        with open(f, "wb") as handle:
            handle.write(b"PK\x03\x04 half a zip file")
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 6336 vs 6224")

    monkeypatch.setattr(torch, "save", full_after_the_first)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: types.SimpleNamespace(total=2**30, used=2**30, free=0))
    model = make_mlp()
    trainer = ws.Trainer(model, max_epochs=2, out_dir=str(tmp_path), progress=False)
    with pytest.raises(CheckpointError, match="could not write '.*last.pt': the disk is full \\(RuntimeError: "
                                              "\\[enforce fail.*0.0 MiB free\\).*the previous 'last.pt' there is "
                                              "intact.*temporary file was removed"):
        trainer.fit(DataLoader(make_dataset(), batch_size=8))
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] >= 0  # the first epoch's checkpoint, readable
    assert not list(tmp_path.glob(".*.tmp"))

    def no_space(obj, f, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(CheckpointError, match="could not write .*the disk is full.*no earlier file was there"):
        save_checkpoint(tmp_path / "other.pt", {"w": torch.ones(2)})
    assert sorted(p.name for p in tmp_path.glob("other*")) == []


def test_a_checkpoint_or_weights_file_whose_tensor_data_changed_is_refused(tmp_path):
    """Issue 37: neither last.pt nor last.safetensors carried a checksum, so changed weights resumed or loaded."""
    model = make_mlp()
    weights = save_weights(tmp_path / "last.safetensors", model.state_dict())
    checkpoint = save_checkpoint(tmp_path / "last.pt", {"model": model.state_dict(), "epoch": 1})
    assert load_weights(weights)[0].keys() == model.state_dict().keys() and load_checkpoint(checkpoint)["epoch"] == 1
    for path in (weights, checkpoint):
        data = bytearray(path.read_bytes())
        at = data.find(model.state_dict()["0.weight"][0, :4].numpy().tobytes())  # a weight's bytes, where they sit
        data[at + 1] ^= 0x01  # one bit of one weight: the file still reads, its numbers are other
        path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="last.safetensors' is damaged: its contents do not match the sha256"):
        load_weights(weights)
    with pytest.raises(CheckpointError, match="last.pt' is damaged: its contents do not match the sha256"):
        load_checkpoint(checkpoint)


def test_written_files_get_the_umasks_permissions_or_keep_those_of_the_file_they_replace(tmp_path):
    """Issue 37: every file was 0600 (mkstemp's), so a teammate or a serving process could not read the model."""
    old = os.umask(0o022)
    try:
        path = save_weights(tmp_path / "w.safetensors", {"w": torch.zeros(2)})
        assert path.stat().st_mode & 0o777 == 0o644
        os.chmod(path, 0o640)
        save_weights(path, {"w": torch.ones(2)})  # replaced: its permissions stay
        assert path.stat().st_mode & 0o777 == 0o640
        os.umask(0o077)
        assert save_checkpoint(tmp_path / "last.pt", {"epoch": 1}).stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
