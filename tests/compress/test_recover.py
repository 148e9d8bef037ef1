"""Recovery after pruning on real data (8x8 UCI digits): distillation and fine-tuning both win accuracy back."""

from __future__ import annotations

import copy

import pytest
import torch

from warmstart.compress import prune, recover
from warmstart.data import InMemoryLoader
from warmstart.errors import ConfigError
from warmstart.models import mlp

OPTIMIZER = {"name": "adamw", "lr": 3e-3}


def accuracy(model, test) -> float:
    model.eval()
    with torch.no_grad():
        right = sum(int((model(x).argmax(1) == y).sum()) for x, y in test)
    return right / test.dataset_size


@pytest.mark.parametrize("method", ["distill", "finetune"])
def test_pruning_then_recovery_wins_back_accuracy(digits_cnn, method):
    teacher, data, test = digits_cnn["model"], digits_cnn["data"], digits_cnn["test"]
    pruned, report = prune(teacher, data.train.tensors[0][:8], ratio=0.7)
    pruned_accuracy = accuracy(pruned, test)
    train = InMemoryLoader(data.train, batch_size=64, shuffle=True)
    result = recover(copy.deepcopy(pruned), train, teacher=teacher, method=method, epochs=3, optimizer=OPTIMIZER,
                     progress=False, seed=0)
    recovered = accuracy(result.model, test)
    # measured: teacher 95.3%, pruned 11.4% (BatchNorm statistics no longer fit), recovered 86-88%
    assert digits_cnn["accuracy"] > 0.9 and pruned_accuracy < 0.5
    assert recovered > pruned_accuracy + 0.3
    assert len(result.history) == 3 and result.method == method


def test_auto_chooses_by_validation_and_trains_the_choice_on_everything(digits_cnn):
    from warmstart.data import split_loader
    from warmstart.selection import choose

    teacher, data = digits_cnn["model"], digits_cnn["data"]
    pruned, _ = prune(teacher, data.train.tensors[0][:8], ratio=0.7)
    train, val = split_loader(InMemoryLoader(data.train, batch_size=64, shuffle=True), 0.2)
    result = recover(pruned, train, val, teacher=teacher, method="auto", epochs=2, optimizer=OPTIMIZER,
                     progress=False, seed=0)
    assert list(result.scores) == ["finetune", "distill"] and result.model is pruned
    picked = result.selection
    assert picked.validation == "the validation loader" and picked.default == "finetune"
    assert result.method == picked.choice == choose(picked.scores, "finetune")
    assert result.scores == {name: score.mean for name, score in picked.scores.items()}
    # the choice's final run trained the model passed in, and validated on val every epoch
    assert len(result.history) == 2 and "val_accuracy" in result.history[-1]
    assert accuracy(pruned, val) == pytest.approx(result.history[-1]["val_accuracy"])


def test_unlabelled_images_are_labelled_by_the_teacher(digits_cnn):
    teacher, data = digits_cnn["model"], digits_cnn["data"]
    pruned, _ = prune(teacher, data.train.tensors[0][:8], ratio=0.7)
    x, y = data.train.tensors
    labelled = InMemoryLoader(x[:50], y[:50], batch_size=25, shuffle=True)
    result = recover(copy.deepcopy(pruned), labelled, teacher=teacher, unlabelled=x[50:250], epochs=1,
                     progress=False, seed=0)
    assert result.trainer.global_step == 10  # (50 labelled + 200 unlabelled) / 25: one epoch over all of them
    assert result.trainer.alpha == 1.0  # soft labels alone: the unlabelled images have no hard ones
    with pytest.raises(ConfigError, match="alpha must be 1"):
        recover(copy.deepcopy(pruned), labelled, teacher=teacher, unlabelled=x[50:], alpha=0.5)
    with pytest.raises(ConfigError, match="need a teacher to label them"):
        recover(copy.deepcopy(pruned), labelled, teacher=teacher, unlabelled=x[50:], method="finetune")
    with pytest.raises(ConfigError, match="adds images to a labelled InMemoryLoader"):
        recover(copy.deepcopy(pruned), list(labelled), teacher=teacher, unlabelled=x[50:])


def test_the_teacher_is_left_as_it_was():
    teacher, student = mlp(16, [32], 3).train(), mlp(16, [8], 3)
    data = [(torch.randn(8, 16), torch.randint(0, 3, (8,)))] * 2
    recover(student, data, teacher=teacher, epochs=1, progress=False)
    assert teacher.training and all(p.requires_grad for p in teacher.parameters())


def test_bad_method_and_distillation_without_teacher_are_refused():
    data = [(torch.randn(8, 16), torch.randint(0, 3, (8,)))]
    with pytest.raises(ConfigError, match="valid: distill, finetune"):
        recover(mlp(16, [8], 3), data, method="prune")
    with pytest.raises(ConfigError, match="needs the unpruned model as teacher"):
        recover(mlp(16, [8], 3), data)
    with pytest.raises(ConfigError, match="resumes that run with resume='last'"):
        recover(mlp(16, [8], 3), data, teacher=mlp(16, [8], 3), method="auto", resume="run/last.pt")


def test_the_default_epochs_count_the_unlabelled_images_an_epoch_trains_on():
    """On 100 labels and 1,500 unlabelled images the default was 75 epochs of 64 steps (4,800), not 300 steps."""
    from warmstart.compress._recover import _epochs

    labelled = InMemoryLoader(torch.randn(100, 4), torch.arange(100) % 2, batch_size=25)
    assert _epochs(None, {}, labelled) == 75  # 4 batches an epoch: 300 steps
    assert _epochs(None, {}, labelled, torch.randn(1500, 4)) == 5  # 64 batches an epoch: 5 epochs, 320 steps
