"""The teacher-logit cache: stale data is impossible to miss, unlabelled sets cache too, damage is named."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import make_images, make_student, make_teacher
from torch.utils.data import DataLoader, Dataset, TensorDataset

from warmstart.data import InMemoryLoader
from warmstart.distill import AugmentedViews, DistillTrainer
from warmstart.distill.cache import SampleFingerprint, TeacherCache
from warmstart.errors import CheckpointError, ConfigError, DataError


_images, _teacher, _student = make_images, make_teacher, make_student


def _distil(loader, path, **options) -> DistillTrainer:
    trainer = DistillTrainer(_student(), _teacher(), cache_teacher=True, cache_path=str(path), progress=False,
                             **options)
    trainer.fit(loader)
    return trainer


def _changed(change) -> TensorDataset:
    x, y = (t.clone() for t in _images(n=200).tensors)
    change(x, y)
    return TensorDataset(x, y)


def _shift_three_samples(x, y):
    x[1:4] += 0.01  # a tiny change to three samples that the 16-sample hash taken at open does not look at


def _swap_two_rows(x, y):
    x[[5, 6]], y[[5, 6]] = x[[6, 5]].clone(), y[[6, 5]].clone()


@pytest.mark.parametrize("change", [_shift_three_samples, _swap_two_rows])
def test_changed_or_moved_samples_make_the_cache_stale(tmp_path, change):
    path = tmp_path / "logits.npy"
    _distil(InMemoryLoader(_images(n=200), batch_size=8), path)
    with pytest.raises(DataError, match="teacher cache .* is stale: a training sample differs"):
        _distil(InMemoryLoader(_changed(change), batch_size=8), path, max_epochs=1, log_every=100)


class _Noisy(Dataset):
    """Returns a fresh random perturbation of the sample on every access."""

    def __init__(self):
        self.data = _images()

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        x, y = self.data[index]
        return x + 0.01 * torch.randn_like(x), y


def test_a_data_set_that_changes_on_every_access_is_refused(tmp_path):
    with pytest.raises(DataError, match="stale.*returns different data on each access.*AugmentedViews"):
        _distil(DataLoader(_Noisy(), batch_size=8), tmp_path / "logits.npy")


def test_unchanged_data_passes_every_check_and_matches_the_online_run(tmp_path):
    cached = _distil(InMemoryLoader(_images(), batch_size=8, shuffle=True, seed=3), tmp_path / "logits.npy",
                     max_epochs=2, log_every=1)
    online = DistillTrainer(_student(), _teacher(), max_epochs=2, progress=False)
    online.fit(InMemoryLoader(_images(), batch_size=8, shuffle=True, seed=3))
    for a, b in zip(cached.unwrapped_model.parameters(), online.unwrapped_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-3)  # the same training, up to fp16 logits


def test_an_unlabelled_loader_is_cached_too(tmp_path):
    x = _images().tensors[0]
    trainer = _distil(InMemoryLoader(x, None, batch_size=8, shuffle=True), tmp_path / "logits.npy", alpha=1.0,
                      max_epochs=2)
    assert len(trainer.history) == 2 and "train_ce" not in trainer.history[-1]  # no hard-label term to report
    views = AugmentedViews(TensorDataset(x), lambda t: t + 0.1 * torch.rand_like(t), views=2)
    _distil(DataLoader(views, batch_size=8), tmp_path / "views.npy", alpha=1.0)
    assert np.load(tmp_path / "views.npy").shape == (80, 1, 4)


def test_a_damaged_cache_names_the_files_to_delete(tmp_path):
    path = tmp_path / "logits.npy"
    _distil(InMemoryLoader(_images(), batch_size=8), path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=f"teacher cache '{path}' is damaged.*delete {path}, .*logits.json"):
        _distil(InMemoryLoader(_images(), batch_size=8), path)
    TeacherCache.sidecar(path).write_text("{not json")
    with pytest.raises(CheckpointError, match="is damaged"):
        _distil(InMemoryLoader(_images(), batch_size=8), path)


def test_a_directory_as_cache_path_is_named_without_advice_to_delete_it(tmp_path):
    with pytest.raises(ConfigError, match="cache_path .* is a directory; give the cache's file path") as error:
        _distil(InMemoryLoader(_images(), batch_size=8), tmp_path)
    assert "delete" not in str(error.value)


def test_teachers_in_another_dtype_are_fed_in_their_dtype():
    teacher = copy.deepcopy(_teacher()).double()
    trainer = DistillTrainer(_student(), teacher, max_epochs=1, progress=False)
    assert trainer.fit(InMemoryLoader(_images(), batch_size=8))[-1]["train_kd"] > 0


def test_the_fingerprint_sees_a_change_far_below_the_data_scale():
    fingerprint = SampleFingerprint(torch.device("cpu"))
    x = torch.randn(16, 3, 32, 32)
    stored = fingerprint(x)
    assert fingerprint.mismatch(fingerprint(x.clone()), stored) <= 0
    moved = x.clone()
    moved[3, 1, 5, 5] += 1e-4
    assert fingerprint.mismatch(fingerprint(moved), stored) > 0
