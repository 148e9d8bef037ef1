"""An ensemble of fine-tuned classifiers: their class probabilities averaged, returned as logits."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from warmstart._batches import run_model
from warmstart.errors import ConfigError


class Ensemble(nn.Module):
    """Averages its members' class probabilities; ``forward`` returns the log of that average.

    The log of the mean probability is a valid logit vector (its softmax is the mean, its argmax
    the ensemble's prediction), so the ensemble trains, evaluates, distils and exports like any
    classifier. Members are called as the trainer calls a model: ``member(x)`` for a tensor,
    ``member(**batch)`` for a text batch (a Hugging Face output gives its ``.logits``).

    Args:
        members: two or more classifiers over the same classes.

    Raises:
        ConfigError: fewer than two members.

    Examples:
        >>> a, b = nn.Linear(3, 2), nn.Linear(3, 2)
        >>> x = torch.randn(4, 3)
        >>> mean = (a(x).softmax(1) + b(x).softmax(1)) / 2
        >>> torch.allclose(Ensemble([a, b])(x).softmax(1), mean, atol=1e-6)
        True
    """

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        if len(members) < 2:
            raise ConfigError(f"an Ensemble averages two or more classifiers, got {len(members)}: use the model itself")
        self.members = nn.ModuleList(members)

    def forward(self, inputs: Any = None, **text: Any) -> torch.Tensor:
        batch = text if inputs is None else inputs  # one positional input (exportable), or a text batch's keywords
        logs = [torch.log_softmax(run_model(m, batch).float(), dim=-1) for m in self.members]
        return torch.logsumexp(torch.stack(logs), dim=0) - math.log(len(logs))
