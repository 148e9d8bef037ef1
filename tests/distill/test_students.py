"""The tiny text student: a bag of hashed character n-grams; padding never changes what it computes."""

from __future__ import annotations

import pytest
import torch

from warmstart.data import CharNgramTokenizer, TextSet, text_loader
from warmstart.distill import ngram_classifier
from warmstart.errors import ConfigError


def test_parameters_and_padding_invariance():
    model = ngram_classifier(buckets=4096, dim=32, num_classes=2)
    assert sum(p.numel() for p in model.parameters()) == 4096 * 32 + 33 * 2  # 0.58% of all-MiniLM-L6-v2's 22.7M
    ids = torch.tensor([[7, 9, 11]])
    padded = torch.tensor([[7, 9, 11, 0, 0]])
    torch.testing.assert_close(model(ids, torch.ones_like(ids)), model(padded, torch.tensor([[1, 1, 1, 0, 0]])))
    garbage_pad = torch.tensor([[7, 9, 11, 5, 5]])  # a collator that pads with another id: the mask decides
    torch.testing.assert_close(model(ids), model(garbage_pad, torch.tensor([[1, 1, 1, 0, 0]])))
    with pytest.raises(ConfigError, match="needs buckets >= 2"):
        ngram_classifier(buckets=1)


def test_the_student_reads_text_loader_batches():
    data = TextSet(["fine", "dire", "fine day"], torch.tensor([1, 0, 1]))
    batch = next(iter(text_loader(data, CharNgramTokenizer(buckets=64), batch_size=3)))
    logits = ngram_classifier(buckets=64, dim=4, num_classes=2)(batch["input_ids"], batch["attention_mask"])
    assert logits.shape == (3, 2)
