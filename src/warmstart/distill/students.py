"""Tiny students for text: a bag of hashed character n-grams (fastText-style) and a linear classifier."""

from __future__ import annotations

import torch
from torch import nn

from warmstart.errors import ConfigError


class NgramClassifier(nn.Module):
    """Mean of the embeddings of a text's n-gram ids (0 is padding), then a linear layer: ``(B, L) -> (B, C)``.

    Takes the batches of :func:`warmstart.data.text_loader` with a
    :class:`warmstart.data.CharNgramTokenizer` (``input_ids``, ``attention_mask``); padding ids
    are left out of the mean by the ``EmbeddingBag``'s ``padding_idx``.

    Args:
        buckets: n-gram ids, the tokenizer's ``buckets`` (embedding rows).
        dim: embedding width.
        num_classes: outputs.
        dropout: dropout on the mean embedding.
    """

    def __init__(self, buckets: int, dim: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.embedding = nn.EmbeddingBag(buckets, dim, mode="mean", padding_idx=0)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is not None:  # padding must carry id 0, whatever the collator put there
            input_ids = input_ids * attention_mask
        return self.head(self.dropout(self.embedding(input_ids)))  # (B, L) -> (B, dim) -> (B, C)


def ngram_classifier(buckets: int = 4096, dim: int = 32, num_classes: int = 2, dropout: float = 0.0) -> NgramClassifier:
    """A fastText-style text classifier over hashed character n-grams: ``buckets * dim + (dim + 1) * C`` parameters.

    Examples:
        >>> model = ngram_classifier(buckets=4096, dim=32, num_classes=2)
        >>> sum(p.numel() for p in model.parameters())
        131138
        >>> model(torch.tensor([[5, 9, 0]]), torch.tensor([[1, 1, 0]])).shape
        torch.Size([1, 2])
    """
    if buckets < 2 or dim < 1 or num_classes < 1:
        raise ConfigError(f"ngram_classifier needs buckets >= 2, dim >= 1 and num_classes >= 1, got {buckets}, {dim}, "
                          f"{num_classes}")
    return NgramClassifier(buckets, dim, num_classes, dropout)
