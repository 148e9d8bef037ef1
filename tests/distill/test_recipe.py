"""distill(): settings scored on validation, hard labels among them, the teacher labelling unlabelled data."""

from __future__ import annotations

import pytest
import torch

from warmstart.data import InMemoryLoader
from warmstart.distill import KDSetting, distill
from warmstart.errors import ConfigError
from warmstart.models import mlp
from warmstart.selection import choose


def _task(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return x, (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 0.5).long()


def _teacher() -> torch.nn.Module:
    """A teacher trained on plenty of labels."""
    from warmstart import Trainer

    torch.manual_seed(0)
    model = mlp(8, [32], 3)
    x, y = _task(2000, seed=1)
    Trainer(model, {"name": "adam", "lr": 1e-2}, max_epochs=15, progress=False, seed=0).fit(
        InMemoryLoader(x, y, batch_size=64, shuffle=True, seed=0))
    return model.eval()


def test_every_setting_is_scored_and_the_best_trains_on_everything():
    x, y = _task(60, seed=2)  # few labels ...
    pool, _ = _task(600, seed=3)  # ... and many images without labels
    torch.manual_seed(0)
    student = mlp(8, [16], 3)
    result = distill(student, _teacher(), InMemoryLoader(x, y, batch_size=16, shuffle=True, seed=0), unlabelled=pool,
                     epochs=20, progress=False, seed=0, selection={"max_detectable": None})
    assert set(result.scores) == {"hard_labels", "kd_alpha0.5_T4", "kd_alpha0.9_T4", "unlabelled_T1", "unlabelled_T4",
                                  "hard_labels_same_steps"}
    assert result.model is student and len(result.history) in (20, 20 * 42 // 4)
    picked = result.selection
    assert picked.validation == "5-fold x 1 cross-validation on 60 labels" and picked.trainings == 30
    assert picked.choice == result.choice and result.scores == {n: s.mean for n, s in picked.scores.items()}
    assert result.choice == choose(picked.scores, "hard_labels")  # the shared rule, on the recorded scores


def test_hard_labels_for_the_same_steps_train_as_many_optimizer_steps_as_the_unlabelled_settings():
    from warmstart.distill.recipe import _same_steps

    x, y = _task(60, seed=2)
    pool, _ = _task(600, seed=3)
    assert _same_steps(InMemoryLoader(x, y, batch_size=16), pool, epochs=3) == round(3 * 42 / 4)  # 660/16 -> 42 steps, 60/16 -> 4
    assert _same_steps(InMemoryLoader(x, y, batch_size=16, drop_last=True), pool, epochs=2) == round(2 * 41 / 3)
    torch.manual_seed(0)
    result = distill(mlp(8, [4], 3), mlp(8, [4], 3), InMemoryLoader(x, y, batch_size=16), unlabelled=pool, epochs=3,
                     settings=[KDSetting("hard_labels_same_steps", 0.0, same_steps=True)], progress=False)
    assert len(result.history) == 32 and result.trainer.global_step == 32 * 4  # vs 3 x 42 = 126 unlabelled
    with pytest.raises(ConfigError, match="counts its steps by unlabelled data, but none was given"):
        distill(mlp(8, [4], 3), mlp(8, [4], 3), InMemoryLoader(x, y), settings=[KDSetting("s", 0.0, same_steps=True)])


def test_the_teacher_is_given_back_as_it_came_trainable_and_in_its_mode():
    """A distillation froze the caller's teacher for good: pruning that network afterwards gave a copy nothing could
    train (the vision job's compression after its students)."""
    x, y = _task(60, seed=2)
    teacher = mlp(8, [16], 3).train()
    teacher.fc1[0].weight.requires_grad_(False)  # a flag of the caller's own is kept too
    before = {name: p.clone() for name, p in teacher.state_dict().items()}
    distill(mlp(8, [4], 3), teacher, InMemoryLoader(x, y, batch_size=16), unlabelled=_task(40, seed=3)[0], epochs=1,
            settings=[KDSetting("unlabelled_T4", 1.0, unlabelled=True)], select=False, progress=False)
    assert teacher.training and not teacher.fc1[0].weight.requires_grad
    assert all(p.requires_grad for name, p in teacher.named_parameters() if name != "fc1.0.weight")
    assert all(torch.equal(p, before[name]) for name, p in teacher.state_dict().items())  # and not trained


def test_settings_that_cannot_work_are_refused():
    x, y = _task(20, seed=2)
    labelled = InMemoryLoader(x, y, batch_size=8)
    with pytest.raises(ConfigError, match="learns from unlabelled data, but none was given"):
        distill(mlp(8, [4], 3), mlp(8, [4], 3), labelled, settings=[KDSetting("u", 1.0, unlabelled=True)])
    with pytest.raises(ConfigError, match="alpha must be 1"):
        distill(mlp(8, [4], 3), mlp(8, [4], 3), labelled, unlabelled=x, settings=[KDSetting("u", 0.5, unlabelled=True)])
    with pytest.raises(ConfigError, match="labelled InMemoryLoader"):
        distill(mlp(8, [4], 3), mlp(8, [4], 3), [(x, y)])


def test_a_deterministic_transform_is_cached_and_a_random_one_trained_online(monkeypatch):
    """Issue 23 (11): distill() used to refuse any InMemoryLoader transform (the cache's check fired)."""
    from warmstart.distill import trainer as distill_trainer

    x, y = _task(40, seed=2)
    built = []
    real_build = distill_trainer.TeacherCache.build
    monkeypatch.setattr(distill_trainer.TeacherCache, "build",
                        lambda *args, **kwargs: built.append(1) or real_build(*args, **kwargs))
    settings = [KDSetting("kd", 0.9)]
    for transform, cached in ((lambda b: (b - 0.1) / 2.0, True), (lambda b: b + 0.1 * torch.randn_like(b), False)):
        built.clear()
        result = distill(mlp(8, [4], 3), mlp(8, [16], 3), InMemoryLoader(x, y, batch_size=8, transform=transform),
                         settings=settings, epochs=2, progress=False, seed=0)
        assert len(result.history) == 2 and bool(built) is cached
