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


def test_auto_keeps_the_method_that_validates_better(digits_cnn):
    from warmstart.data import split_loader

    teacher, data = digits_cnn["model"], digits_cnn["data"]
    pruned, _ = prune(teacher, data.train.tensors[0][:8], ratio=0.7)
    train, val = split_loader(InMemoryLoader(data.train, batch_size=64, shuffle=True), 0.2)
    result = recover(pruned, train, val, teacher=teacher, method="auto", epochs=2, optimizer=OPTIMIZER,
                     progress=False, seed=0)
    assert set(result.scores) == {"finetune", "distill"} and result.model is pruned
    assert result.method == max(result.scores, key=result.scores.get)
    # the model passed in holds the winner's weights: its validation accuracy is the winner's score
    assert accuracy(pruned, val) == pytest.approx(result.scores[result.method])
    assert result.trainer.evaluate(val)["accuracy"] == pytest.approx(result.scores[result.method])
    with pytest.raises(ConfigError, match="method='auto' chooses .* pass val_loader="):
        recover(pruned, train, teacher=teacher, method="auto")


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
