"""The teacher-logit cache: stale data is impossible to miss, unlabelled sets cache too, damage is named."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch
from conftest import make_images, make_student, make_teacher
from torch.utils.data import DataLoader, Dataset, TensorDataset

import warmstart as ws
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


@pytest.fixture(params=["in memory", "memory map"])
def reading(request, monkeypatch):
    """Both ways a cache is read: whole into memory at the first lookup (small caches), or batch by batch."""
    if request.param == "memory map":
        monkeypatch.setattr(TeacherCache, "in_memory_bytes", 0)
    return request.param


@pytest.mark.parametrize("change", [_shift_three_samples, _swap_two_rows])
def test_changed_or_moved_samples_make_the_cache_stale(tmp_path, change, reading):
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


def test_unchanged_data_passes_every_check_and_matches_the_online_run(tmp_path, reading):
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


def test_a_lookup_is_the_same_read_whole_or_from_the_memory_map(tmp_path, monkeypatch):
    path = tmp_path / "logits.npy"
    cache = _distil(InMemoryLoader(_images(n=40), batch_size=8), path, max_epochs=1).cache
    rows = torch.tensor([39, 0, 7, 7, 21])
    whole = cache.lookup(rows, torch.device("cpu"))
    assert cache._tables is not None  # this small cache was read into memory
    monkeypatch.setattr(TeacherCache, "in_memory_bytes", 0)
    mapped = TeacherCache.open(path, expect={}).lookup(rows, torch.device("cpu"))
    for a, b in zip(whole, mapped):
        assert a.dtype == b.dtype and torch.equal(a, b)
    expected = torch.from_numpy(np.load(path)[rows.numpy()].astype(np.float32))
    assert torch.equal(whole[0], expected)


def test_teachers_in_another_dtype_are_fed_in_their_dtype():
    teacher = copy.deepcopy(_teacher()).double()
    trainer = DistillTrainer(_student(), teacher, max_epochs=1, progress=False)
    assert trainer.fit(InMemoryLoader(_images(), batch_size=8))[-1]["train_kd"] > 0


def test_the_fingerprint_sees_a_change_far_below_the_data_scale():
    fingerprint = SampleFingerprint(torch.device("cpu"))
    x = torch.randn(16, 3, 32, 32)
    stored = SampleFingerprint.reference(fingerprint(x))
    assert fingerprint.mismatch(fingerprint.projection(x.clone()), stored) <= 0
    assert fingerprint.mismatch(fingerprint.projection(x[[4, 2, 9]]), stored[[4, 2, 9]]) <= 0  # in another batch
    moved = x.clone()
    moved[3, 1, 5, 5] += 1e-4
    assert fingerprint.mismatch(fingerprint.projection(moved), stored) > 0


def _jitter(x: torch.Tensor) -> torch.Tensor:
    return x + torch.rand_like(x)  # module level, so it pickles (a lambda does not)


def _views_by_epoch(views: AugmentedViews, epochs: int, **loader_options) -> list[torch.Tensor]:
    """The rows and views a loader yields in each epoch, with ``set_epoch`` called the way the Trainer does."""
    loader = DataLoader(views, batch_size=4, **loader_options)
    seen = []
    for epoch in range(epochs):
        views.set_epoch(epoch)  # in the main process, before the epoch's iterator, as Trainer._set_epoch does
        seen.append(torch.cat([torch.cat([x, row[:, None].float()], 1) for x, row in loader]))
    return seen


def test_augmented_views_rotate_in_persistent_workers():
    views = AugmentedViews(TensorDataset(torch.zeros(8, 3)), _jitter, views=2, seed=3)
    persistent = _views_by_epoch(views, 2, num_workers=2, persistent_workers=True)
    in_process = _views_by_epoch(AugmentedViews(TensorDataset(torch.zeros(8, 3)), _jitter, views=2, seed=3), 2)
    assert not torch.equal(persistent[0], persistent[1])  # epoch 1 shows the other view of every sample
    for epoch in range(2):
        torch.testing.assert_close(persistent[epoch], in_process[epoch], rtol=0, atol=0)


def test_augmented_views_keep_their_epoch_through_pickle_and_copies():
    views = AugmentedViews(TensorDataset(torch.zeros(4, 3)), _jitter, views=3)
    views.set_epoch(2)
    for twin in (pickle.loads(pickle.dumps(views)), copy.deepcopy(views)):
        assert twin.epoch == 2 and torch.equal(twin[1][0], views[1][0])
        seen = _views_by_epoch(twin, 2, num_workers=1, persistent_workers=True)
        assert [epoch[:, -1].tolist() for epoch in seen] == [[0, 4, 8, 9], [1, 5, 6, 10]]  # i * 3 + (i + e) % 3
        assert views.epoch == 2  # a copy's epoch is its own


class _Crash(Exception):
    pass


class _CrashAfter(ws.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_step_end(self, trainer):
        if trainer.global_step == self.step:
            raise _Crash


def test_a_cached_run_interrupted_mid_epoch_resumes_to_the_uninterrupted_weights(tmp_path, reading):
    """Offline distillation x mid-epoch resume: the cache is reopened and its checks go on (both ways of reading)."""
    def trainer(out, callbacks=()):
        return DistillTrainer(_student(), _teacher(), temperature=2.0, cache_teacher=True,
                              cache_path=str(tmp_path / "logits.npy"), max_epochs=2, save_every=4, log_every=3,
                              out_dir=str(out), progress=False, seed=0, callbacks=list(callbacks))

    def loader():
        return InMemoryLoader(_images(n=56), batch_size=8, shuffle=True, seed=1)  # 7 steps an epoch

    whole = trainer(tmp_path / "whole")
    whole.fit(loader())
    with pytest.raises(_Crash):
        trainer(tmp_path / "cut", [_CrashAfter(11)]).fit(loader())  # saved at step 8, mid-epoch 2
    resumed = trainer(tmp_path / "cut")
    resumed.fit(loader(), resume="last")
    assert resumed.global_step == whole.global_step == 14
    for a, b in zip(resumed.unwrapped_model.state_dict().values(), whole.unwrapped_model.state_dict().values()):
        assert torch.equal(a, b)
