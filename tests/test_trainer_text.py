"""The Trainer on tokenized text: dict batches go to the model as keyword arguments, Hugging Face outputs give logits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import warmstart as ws
from warmstart._batches import run_model, split_batch
from warmstart.data import TextSet, text_loader
from warmstart.distill import DistillTrainer
from warmstart.errors import DataError

WORDS = ["good", "great", "fine", "lovely", "bad", "awful", "poor", "dire"] * 4
LABELS = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0] * 4)


class WordTokenizer:
    """A whitespace tokenizer over a fixed vocabulary (0 pads), called like a Hugging Face tokenizer."""

    pad_token_id = 0

    def __init__(self) -> None:
        self.vocab = {w: i + 2 for i, w in enumerate(sorted(set(WORDS)))}

    def __call__(self, texts, truncation=False, max_length=None):
        return {"input_ids": [[1] + [self.vocab[w] for w in t.split()] for t in texts]}  # 1 plays [CLS]


def tiny_bert() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=12, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=8, num_labels=2)
    return transformers.BertForSequenceClassification(config)


def test_a_hugging_face_classifier_trains_without_a_custom_compute_loss():
    loader = text_loader(TextSet(WORDS, LABELS), WordTokenizer(), batch_size=8, shuffle=True)
    trainer = ws.Trainer(tiny_bert(), {"name": "adamw", "lr": 1e-2}, max_epochs=4, progress=False, seed=0)
    history = trainer.fit(loader, text_loader(TextSet(WORDS, LABELS), WordTokenizer(), batch_size=16))
    assert history[-1]["val_accuracy"] == 1.0 and history[-1]["train_loss"] < history[0]["train_loss"]
    assert set(trainer.evaluate(loader)) == {"loss", "accuracy"}


def test_text_batches_split_into_keyword_inputs_and_labels():
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long), "attention_mask": torch.ones(2, 3, dtype=torch.long),
             "labels": torch.tensor([0, 1]), "soft_labels": torch.full((2, 2), 0.5)}
    inputs, target = split_batch(batch)
    assert set(inputs) == {"input_ids", "attention_mask"} and target.tolist() == [0, 1]

    class Keywords(nn.Module):
        def forward(self, input_ids, attention_mask):
            return (input_ids * attention_mask).float()

    assert run_model(Keywords(), inputs).shape == (2, 3)
    with pytest.raises(DataError, match="no attention_mask, so the model would attend to the padding"):
        split_batch({"input_ids": torch.ones(2, 3, dtype=torch.long), "labels": torch.tensor([0, 1])})


def test_distillation_between_models_that_share_a_tokenizer():
    loader = text_loader(TextSet(WORDS, LABELS), WordTokenizer(), batch_size=8, shuffle=True)
    teacher = tiny_bert()
    ws.Trainer(teacher, {"name": "adamw", "lr": 1e-2}, max_epochs=3, progress=False, seed=0).fit(loader)
    student = tiny_bert()
    history = DistillTrainer(student, teacher, {"name": "adamw", "lr": 1e-2}, temperature=2.0, alpha=0.5, max_epochs=2,
                             progress=False, seed=0).fit(loader, loader)
    assert {"train_kd", "train_ce", "val_accuracy"} <= set(history[-1])
