"""SoftLabelTrainer and its loss: checked against float64 references, trained on text batches, bad rows named."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from warmstart.data import CharNgramTokenizer, TextSet, text_loader
from warmstart.data import InMemoryLoader
from warmstart.distill import SoftLabelTrainer, kd_loss, ngram_classifier, soft_label_terms, teacher_probabilities
from warmstart.errors import ConfigError, DataError


def test_the_loss_matches_a_float64_reference_with_its_gradient():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    soft = torch.softmax(torch.randn(6, 4, generator=g, dtype=torch.float64), -1)
    soft[0] = torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=torch.float64)  # a class nobody chose contributes 0
    targets = torch.tensor([1, 0, 3, 2, 1, 0])
    t, alpha = 2.0, 0.7
    q = soft ** (1 / t) / (soft ** (1 / t)).sum(-1, keepdim=True)
    log_p = torch.log_softmax(logits / t, -1)
    kl = torch.where(q > 0, q * (torch.log(q) - log_p), torch.zeros_like(q)).sum(-1).mean()
    expected = alpha * t * t * kl + (1 - alpha) * F.cross_entropy(logits, targets)
    got = soft_label_terms(logits.float(), soft.float(), targets, t, alpha)["loss"]
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    (grad_expected,) = torch.autograd.grad(expected, logits)
    student = logits.detach().float().requires_grad_(True)
    soft_label_terms(student, soft.float(), targets, t, alpha)["loss"].backward()
    torch.testing.assert_close(student.grad.double(), grad_expected, rtol=1e-4, atol=1e-6)


def test_a_teachers_probabilities_give_hintons_kd_loss():
    g = torch.Generator().manual_seed(1)
    student, teacher, y = torch.randn(8, 3, generator=g), torch.randn(8, 3, generator=g), torch.randint(0, 3, (8,))
    ours = soft_label_terms(student, teacher.softmax(-1), y, temperature=4.0, alpha=0.9)["loss"]
    assert ours.item() == pytest.approx(kd_loss(student, teacher, y, temperature=4.0, alpha=0.9).item(), rel=1e-5)


def test_bad_settings_are_named():
    with pytest.raises(ConfigError, match="no labels; pass alpha=1"):
        soft_label_terms(torch.zeros(2, 2), torch.full((2, 2), 0.5), None, alpha=0.5)
    with pytest.raises(DataError, match=r"soft_labels \(2, 3\) and the model's outputs \(2, 2\) differ"):
        soft_label_terms(torch.zeros(2, 2), torch.full((2, 3), 1 / 3))


def _texts() -> TextSet:
    words = ["good", "great", "lovely", "bad", "awful", "dreadful", "superb", "horrid"]
    labels = torch.tensor([1, 1, 1, 0, 0, 0, 1, 0])
    soft = torch.stack([labels.float() * 0.8 + 0.1, 1 - (labels.float() * 0.8 + 0.1)], 1).flip(1)
    return TextSet(words, labels, soft)


def test_soft_label_trainer_learns_from_text_batches_and_validates_on_hard_labels():
    data, tokenizer = _texts(), CharNgramTokenizer(buckets=512)
    torch.manual_seed(0)
    model = ngram_classifier(buckets=512, dim=8, num_classes=2)
    trainer = SoftLabelTrainer(model, {"name": "adamw", "lr": 0.05}, temperature=2.0, alpha=0.5, max_epochs=15,
                               progress=False, seed=0)
    history = trainer.fit(text_loader(data, tokenizer, batch_size=4, shuffle=True), text_loader(data, tokenizer))
    assert {"train_kd", "train_ce", "val_loss", "val_accuracy"} <= set(history[-1])
    assert history[-1]["val_accuracy"] == 1.0 and history[-1]["train_loss"] < history[0]["train_loss"]
    unlabelled = TextSet(data.texts, None, data.soft_labels)  # alpha=1 needs no labels
    SoftLabelTrainer(model, max_epochs=1, progress=False).fit(text_loader(unlabelled, tokenizer, batch_size=4))


def test_rows_that_are_not_distributions_are_refused():
    batch = {"input": torch.randn(4, 3), "labels": torch.zeros(4, dtype=torch.long),
             "soft_labels": torch.tensor([[0.5, 0.5], [0.9, 0.3], [1.0, 0.0], [0.2, 0.8]])}
    with pytest.raises(DataError, match="soft_labels must be probabilities"):
        SoftLabelTrainer(nn.Linear(3, 2), progress=False).fit([batch])
    with pytest.raises(DataError, match="needs batches with 'soft_labels'"):
        SoftLabelTrainer(nn.Linear(3, 2), progress=False).fit([(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))])


class _WordScorer(nn.Module):
    """A text 'teacher': the logits of each row are its token ids summed into 3 classes (no padding effect)."""

    def forward(self, input_ids, attention_mask):
        ids = (input_ids * attention_mask).double()
        return torch.stack([ids.sum(1), ids.max(1).values, -ids.sum(1)], 1) / 50


def test_teacher_probabilities_follow_the_data_sets_order_against_a_float64_reference():
    texts = ["a", "abcdef", "ab", "abcdefghij", "abc"]  # lengths out of order: the loader sorts them
    tokenizer = CharNgramTokenizer(buckets=64, ngrams=[1])
    loader = text_loader(TextSet(texts, None), tokenizer, batch_size=2, max_length=None)
    assert loader.dataset.order.tolist() != list(range(len(texts)))  # the loader did reorder the rows
    teacher = _WordScorer()
    soft = teacher_probabilities(teacher, loader, temperature=2.0)
    for i, text in enumerate(texts):  # the obvious slow version: one text at a time
        single = text_loader(TextSet([text], None), tokenizer, batch_size=1, max_length=None)
        batch = next(iter(single))
        logits = teacher(batch["input_ids"], batch["attention_mask"])
        assert torch.allclose(soft[i].double(), torch.softmax(logits[0] / 2.0, -1), atol=1e-6)
    x = torch.randn(7, 4)
    linear = nn.Linear(4, 3).train()
    images = teacher_probabilities(linear, InMemoryLoader(x, None, batch_size=3))
    assert torch.allclose(images, torch.softmax(linear(x), -1), atol=1e-6) and linear.training  # its mode given back
    with pytest.raises(ConfigError, match="unshuffled"):
        teacher_probabilities(linear, InMemoryLoader(x, None, batch_size=3, shuffle=True))
