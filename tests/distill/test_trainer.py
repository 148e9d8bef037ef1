"""DistillTrainer: frozen teachers, cached logits (and their staleness checks), views, hints, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_images, make_student, make_teacher
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import warmstart as ws
from warmstart.checkpoint import load_weights
from warmstart.data import InMemoryLoader, build_augmentation
from warmstart.distill import AugmentedViews, DistillTrainer, FeatureHint
from warmstart.errors import ConfigError, DataError
from warmstart.models import mlp, small_cnn


_images, _teacher, _student = make_images, make_teacher, make_student


def _count_calls(model: nn.Module) -> list[int]:
    calls: list[int] = []
    model.register_forward_hook(lambda module, args, out: calls.append(len(args[0])))
    return calls


def test_online_distillation_keeps_the_teacher_frozen_and_out_of_the_checkpoint(tmp_path):
    teacher = _teacher()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    trainer = DistillTrainer(_student(), teacher, {"name": "adam", "lr": 1e-2}, temperature=3.0, alpha=0.8,
                             max_epochs=2, out_dir=str(tmp_path), progress=False)
    history = trainer.fit(DataLoader(_images(), batch_size=8, shuffle=True), DataLoader(_images(seed=1), batch_size=8))
    assert {"train_loss", "train_kd", "train_ce", "val_loss", "val_accuracy"} <= set(history[-1])
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    weights, meta = load_weights(tmp_path / "last.safetensors")
    assert set(weights) == set(trainer.unwrapped_model.state_dict())  # the student only
    assert meta["teachers"][0]["class"] == "Sequential" and len(meta["teachers"][0]["sha256"]) == 64
    assert meta["distillation"] == {"temperature": 3.0, "alpha": 0.8, "combine": "probs"}


def test_cached_logits_run_the_teacher_once_and_are_reused(tmp_path):
    teacher = _teacher()
    calls = _count_calls(teacher)
    loader = InMemoryLoader(_images(), batch_size=8, shuffle=True)
    cached = DistillTrainer(_student(), teacher, temperature=2.0, cache_teacher=True, max_epochs=3,
                            out_dir=str(tmp_path), progress=False)
    cached.fit(loader)
    assert sum(calls) == 40 + 16  # one pass over the 40 samples, and the 16 probe samples stored with the cache
    logits = np.load(tmp_path / "teacher_logits.npy", mmap_mode="r")
    assert logits.dtype == np.float16 and logits.shape == (40, 1, 4)
    with torch.no_grad():
        expected = teacher(_images().tensors[0]).numpy()
    np.testing.assert_allclose(logits[:, 0], expected, rtol=1e-2, atol=1e-2)

    calls.clear()  # another run reuses the cache through cache_path (a fresh run into out_dir would replace it)
    again = DistillTrainer(_student(), teacher, temperature=2.0, cache_teacher=True, max_epochs=1,
                           cache_path=str(tmp_path / "teacher_logits.npy"), progress=False)
    again.fit(loader)
    assert sum(calls) == 16  # the file is reused: only the probe samples run (checked against the stored outputs)
    online = DistillTrainer(_student(), teacher, temperature=2.0, max_epochs=3, progress=False)
    online.fit(loader)
    for a, b in zip(cached.unwrapped_model.parameters(), online.unwrapped_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-3)  # the same training up to fp16 logits


def test_a_cache_for_another_teacher_or_data_set_is_refused(tmp_path):
    path = str(tmp_path / "logits.npy")
    DistillTrainer(_student(), _teacher(), cache_teacher=True, cache_path=path, progress=False).fit(
        InMemoryLoader(_images(), batch_size=8))
    other_teacher = small_cnn(num_classes=4, width=8)
    with pytest.raises(DataError, match="was built for another teacher \\(its weights hash\\).*delete .*to rebuild"):
        DistillTrainer(_student(), other_teacher, cache_teacher=True, cache_path=path, progress=False).fit(
            InMemoryLoader(_images(), batch_size=8))
    with pytest.raises(DataError, match="was built for another data set length: 40 there, 48 now"):
        DistillTrainer(_student(), _teacher(), cache_teacher=True, cache_path=path, progress=False).fit(
            InMemoryLoader(_images(n=48), batch_size=8))
    with pytest.raises(DataError, match="another data set \\(its sample hash\\)"):
        DistillTrainer(_student(), _teacher(), cache_teacher=True, cache_path=path, progress=False).fit(
            InMemoryLoader(_images(seed=5), batch_size=8))


def test_a_teacher_changed_outside_its_tensors_is_refused(tmp_path):
    """Issue 23 (8): the weights hash cannot see an attribute read in forward; the probe outputs do."""

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.net, self.scale = _teacher(), 1.0

        def forward(self, x):
            return self.net(x) * self.scale

    teacher, path = Scaled(), str(tmp_path / "logits.npy")
    DistillTrainer(_student(), teacher, cache_teacher=True, cache_path=path, max_epochs=1, progress=False).fit(
        InMemoryLoader(_images(), batch_size=8))
    DistillTrainer(_student(), teacher, cache_teacher=True, cache_path=path, max_epochs=1, progress=False).fit(
        InMemoryLoader(_images(), batch_size=8))  # the same teacher: the cache is reused
    teacher.scale = 1.5
    with pytest.raises(DataError, match="is stale: the teacher's outputs on 16 probe samples differ.*though its "
                                        "weights hash matches.*delete .*to rebuild"):
        DistillTrainer(_student(), teacher, cache_teacher=True, cache_path=path, progress=False).fit(
            InMemoryLoader(_images(), batch_size=8))


def test_a_deterministic_transform_is_cached_through_and_a_random_one_refused(tmp_path):
    """Issue 23 (11): a normalisation is cached (the teacher's logits of the normalised inputs); noise is not."""
    teacher, images = _teacher(), _images().tensors[0]
    mean, std = images.mean(), images.std()

    def normalise(x):
        return (x - mean) / std

    loader = InMemoryLoader(*_images().tensors, batch_size=8, shuffle=True, seed=0, transform=normalise)
    cached = DistillTrainer(_student(), teacher, temperature=2.0, cache_teacher=True, max_epochs=2,
                            out_dir=str(tmp_path), progress=False, seed=0)
    cached.fit(loader)
    with torch.no_grad():
        expected = teacher(normalise(images)).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "teacher_logits.npy")[:, 0], expected, rtol=1e-2, atol=1e-2)
    online = DistillTrainer(_student(), teacher, temperature=2.0, max_epochs=2, progress=False, seed=0)
    online.fit(loader)
    for a, b in zip(cached.unwrapped_model.parameters(), online.unwrapped_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-3)  # the same training up to fp16 logits
    for transform in (lambda x: x + 0.1 * torch.randn_like(x), lambda x: x - x.mean(0)):  # noise; per-batch centring
        with pytest.raises(DataError, match="cached teacher logits would be stale.*gives other outputs for the same "
                                            "inputs"):
            DistillTrainer(_student(), teacher, cache_teacher=True, progress=False).fit(
                InMemoryLoader(_images(), batch_size=8, transform=transform))


def test_random_augmentation_is_refused_unless_views_are_cached(tmp_path):
    augment = build_augmentation({"rotation": 20})
    with pytest.raises(DataError, match="cached teacher logits would be stale.*AugmentedViews"):
        DistillTrainer(_student(), _teacher(), cache_teacher=True, progress=False).fit(
            InMemoryLoader(_images(), batch_size=8, transform=augment))

    class Augmented(TensorDataset):
        transform = augment

    with pytest.raises(DataError, match="randomly augmented \\(Compose\\)"):
        DistillTrainer(_student(), _teacher(), cache_teacher=True, progress=False).fit(
            DataLoader(Augmented(*_images().tensors), batch_size=8))

    views = AugmentedViews(_images(), augment, views=3, seed=4)
    teacher = _teacher()
    trainer = DistillTrainer(_student(), teacher, cache_teacher=True, out_dir=str(tmp_path), max_epochs=2,
                             progress=False)
    trainer.fit(DataLoader(views, batch_size=8, shuffle=True))
    logits = np.load(tmp_path / "teacher_logits.npy", mmap_mode="r")
    assert logits.shape == (120, 1, 4)
    for index, view in [(0, 0), (7, 2), (39, 1)]:  # row index * 3 + view holds the teacher's logits of that view
        x, _ = views.view(index, view)
        with torch.no_grad():
            expected = teacher(x.unsqueeze(0))[0].numpy()
        np.testing.assert_allclose(logits[index * 3 + view, 0], expected, rtol=1e-2, atol=1e-2)
    views.set_epoch(1)
    assert views[7][2] == 7 * 3 + (7 + 1) % 3 and torch.equal(views[7][0], views.view(7, 2)[0])


def test_feature_hints_learn_an_adapter_that_is_checkpointed(tmp_path):
    student = small_cnn(num_classes=4, width=4)
    trainer = DistillTrainer(student, _teacher(), hints=[FeatureHint("block2", "block2", weight=0.5)],
                             max_epochs=2, out_dir=str(tmp_path), progress=False)
    history = trainer.fit(DataLoader(_images(), batch_size=8, shuffle=True))
    adapter = trainer.adapters[0][0]
    assert isinstance(adapter, nn.Conv2d) and (adapter.in_channels, adapter.out_channels) == (8, 16)
    assert "train_hint_0" in history[-1] and trainer.optimizer.param_groups[-1]["name"] == "hint_adapters"
    state = ws.load_checkpoint(tmp_path / "last.pt")
    assert torch.equal(state["trainer"]["adapters"]["0.0.weight"], adapter.weight.detach())
    with pytest.raises(ConfigError, match="hint 'pool' -> 'block2'.*both give \\(B, C, H, W\\) or both \\(B, C\\)"):
        DistillTrainer(small_cnn(num_classes=4, width=4), _teacher(), hints=[FeatureHint("pool", "block2")],
                       progress=False).fit(DataLoader(_images(), batch_size=8))
    with pytest.raises(ConfigError, match="hints need the teacher's features every step"):
        DistillTrainer(student, _teacher(), hints=[FeatureHint("block2", "block2")], cache_teacher=True)


def test_several_teachers_and_bad_input():
    teachers = [_teacher(), small_cnn(num_classes=4, width=4)]
    trainer = DistillTrainer(_student(), teachers, teacher_weights=[2.0, 1.0], combine="kl", max_epochs=1,
                             progress=False)
    assert trainer.fit(DataLoader(_images(), batch_size=8))[-1]["train_kd"] > 0
    with pytest.raises(DataError, match=r"student logits \(8, 3\) and teacher logits \(8, 4\) differ"):
        DistillTrainer(mlp(144, [8], 3), _teacher(), progress=False).fit(DataLoader(_images(), batch_size=8))
    with pytest.raises(ConfigError, match="temperature must be a positive number"):
        DistillTrainer(_student(), _teacher(), temperature=0)
    with pytest.raises(ConfigError, match="alpha must be in \\[0, 1\\]"):
        DistillTrainer(_student(), _teacher(), alpha=2.0)
    with pytest.raises(ConfigError, match="teacher_weights has 1 entries for 2 teachers"):
        DistillTrainer(_student(), teachers, teacher_weights=[1.0])
    with pytest.raises(ConfigError, match="teacher is an empty list"):
        DistillTrainer(_student(), [])
    student = _student()
    with pytest.raises(ConfigError, match="the student is also given as the teacher"):
        DistillTrainer(student, student)


def test_unlabelled_transfer_set_with_alpha_one():
    teacher, data = _teacher(), _images()
    unlabelled = InMemoryLoader(data.tensors[0], None, batch_size=8, shuffle=True)
    trainer = DistillTrainer(_student(), teacher, alpha=1.0, max_epochs=2, progress=False)
    history = trainer.fit(unlabelled, InMemoryLoader(data, batch_size=20))
    assert len(history) == 2 and "val_accuracy" in history[-1]
    with pytest.raises(ConfigError, match="no targets were given; pass targets or alpha=1"):
        DistillTrainer(_student(), teacher, alpha=0.5, progress=False).fit(unlabelled)


def test_a_cache_without_out_dir_lives_in_a_temporary_folder_removed_with_the_trainer():
    trainer = DistillTrainer(_student(), _teacher(), cache_teacher=True, max_epochs=1, progress=False)
    trainer.fit(InMemoryLoader(_images(), batch_size=8))
    folder = trainer._cache_file().parent
    assert (folder / "teacher_logits.npy").is_file()
    trainer._cache_tmp.cleanup()
    assert not folder.exists()
