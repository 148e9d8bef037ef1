"""Ensemble: the members' class probabilities averaged, as logits, for image and text batches."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import warmstart as ws
from warmstart.errors import ConfigError
from warmstart.finetune import Ensemble


class _Output:
    def __init__(self, logits: torch.Tensor):
        self.logits = logits


class _TextModel(nn.Module):
    """A stand-in for a Hugging Face classifier: keyword inputs, an output object with ``.logits``."""

    def __init__(self, seed: int):
        super().__init__()
        self.embed = nn.Embedding(10, 2)
        torch.nn.init.normal_(self.embed.weight, generator=torch.Generator().manual_seed(seed))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> _Output:
        mask = attention_mask.unsqueeze(-1).float()
        return _Output((self.embed(input_ids) * mask).sum(1) / mask.sum(1))


def test_the_ensemble_is_the_log_of_the_mean_probability_against_float64():
    torch.manual_seed(0)
    members = [nn.Linear(4, 3) for _ in range(3)]
    x = 3 * torch.randn(8, 4)
    reference = sum(m.double()(x.double()).softmax(1) for m in members) / 3
    for m in members:
        m.float()
    out = Ensemble(members)(x)
    assert out.dtype == torch.float32
    assert torch.allclose(out.double().exp(), reference, atol=1e-6)
    assert torch.allclose(out.double().exp().sum(1), torch.ones(8, dtype=torch.float64), atol=1e-6)


def test_text_batches_reach_every_member_and_evaluate_scores_the_average():
    members = [_TextModel(0), _TextModel(1)]
    batch = {"input_ids": torch.tensor([[1, 2, 0], [3, 4, 5]]), "attention_mask": torch.tensor([[1, 1, 0], [1, 1, 1]])}
    out = Ensemble(members)(**batch)
    mean = sum(m(**batch).logits.softmax(1) for m in members) / 2
    assert torch.allclose(out.exp(), mean, atol=1e-6)
    labels = mean.argmax(1)
    metrics = ws.evaluate(Ensemble(members), [{**batch, "labels": labels}], threads=1)
    assert metrics["accuracy"] == 1.0


def test_an_ensemble_of_one_is_refused():
    with pytest.raises(ConfigError, match="two or more classifiers, got 1"):
        Ensemble([nn.Linear(2, 2)])


def test_an_ensemble_exports_to_a_file_a_serving_process_loads(tmp_path):
    from warmstart.compress import export, run_in_fresh_process

    torch.manual_seed(0)
    ensemble = Ensemble([ws.models.small_cnn(num_classes=3, width=4) for _ in range(2)]).eval()
    x = torch.randn(5, 1, 28, 28)
    path = export(ensemble, x[:2], tmp_path / "ensemble.pt2")
    served = run_in_fresh_process([path], [x], repeats=1, warmup=0)[str(path)]
    assert not served.warmstart_found
    with torch.no_grad():
        assert torch.allclose(served.outputs[0], ensemble(x), atol=1e-5)  # another batch size: the batch stays dynamic
