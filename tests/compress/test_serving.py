"""export_for_serving: the files written, each run in a fresh process and compared with the eager model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from warmstart.compress import export_for_serving
from warmstart.errors import ConfigError
from warmstart.models import mlp

pytest.importorskip("onnxruntime")
X = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))


class ValueDependent(nn.Module):
    """A forward whose branch depends on the input's values: no graph can capture it."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) if x.sum() > 0 else -self.linear(x)


def test_each_file_runs_in_a_fresh_process_like_the_eager_model_and_what_no_graph_captures_is_named(tmp_path):
    torch.manual_seed(0)
    float_model = mlp(64, [32], 10).eval()
    rows = export_for_serving({"branchy": ValueDependent().eval(), "float": float_model}, X, tmp_path)
    assert rows["model.pt2"]["note"].startswith("branchy: not exported (") and "float model instead" in rows["model.pt2"]["note"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.onnx", "model.pt2"]
    for name, row in rows.items():
        assert row["model"] == "float" and row["bytes"] == (tmp_path / name).stat().st_size
        assert row["same_predictions"] == 1.0 and row["max_abs_difference"] < 1e-5
        assert row["latency_ms"] > 0 and row["eager_latency_ms"] > 0  # the eager latency measured here


def test_no_model_is_refused_by_name(tmp_path):
    with pytest.raises(ConfigError, match="models is empty"):
        export_for_serving({}, X, tmp_path)
