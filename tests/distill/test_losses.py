"""kd_loss against a float64 reference: value, gradient, T^2, batchmean, fp16 safety, several teachers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from warmstart.distill import kd_loss, kd_terms
from warmstart.errors import ConfigError, DataError


def _reference(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, temperature: float, alpha: float) -> torch.Tensor:
    """The textbook formula in float64: sum over classes, mean over the batch, T^2 always."""
    s, t = s.double(), t.double()
    p_t = torch.softmax(t / temperature, dim=1)
    kl = (p_t * (torch.log(p_t) - torch.log_softmax(s / temperature, dim=1))).sum(dim=1).mean()
    ce = -torch.log_softmax(s, dim=1)[torch.arange(len(y)), y].mean()
    return alpha * temperature**2 * kl + (1 - alpha) * ce


@pytest.mark.parametrize(("temperature", "alpha"), [(1.0, 0.5), (4.0, 0.9), (20.0, 1.0), (2.0, 0.0)])
def test_value_matches_the_float64_reference(temperature, alpha):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(16, 10, generator=g) * 3, torch.randn(16, 10, generator=g) * 3
    y = torch.randint(0, 10, (16,), generator=g)
    expected = _reference(s, t, y, temperature, alpha)
    torch.testing.assert_close(kd_loss(s.double(), t.double(), y, temperature, alpha), expected)
    torch.testing.assert_close(kd_loss(s, t, y, temperature, alpha).double(), expected, rtol=1e-5, atol=1e-6)


def test_gradient_is_alpha_t_times_the_probability_gap_over_b():
    g = torch.Generator().manual_seed(1)
    s = (torch.randn(8, 5, generator=g, dtype=torch.float64) * 2).requires_grad_()
    t = torch.randn(8, 5, generator=g, dtype=torch.float64) * 2
    temperature, alpha = 3.0, 0.7
    kd = kd_terms(s, t, None, temperature, alpha=1.0)["kd"] * alpha  # the KD term of alpha=0.7
    (grad,) = torch.autograd.grad(kd, s)
    expected = alpha * temperature * (torch.softmax(s / temperature, 1) - torch.softmax(t / temperature, 1)) / 8
    torch.testing.assert_close(grad, expected.detach())


def test_t_squared_is_applied_and_the_mean_is_over_samples_not_elements():
    s, t = torch.zeros(4, 10), torch.randn(4, 10)
    at_1 = kd_loss(s, t, temperature=1.0, alpha=1.0)
    kl_sum_over_classes = F.kl_div(torch.log_softmax(s, 1), torch.log_softmax(t, 1), reduction="sum",
                                   log_target=True) / 4
    torch.testing.assert_close(at_1, kl_sum_over_classes)  # batchmean: 10x the per-element mean
    at_5 = kd_loss(s, t * 5, temperature=5.0, alpha=1.0)
    torch.testing.assert_close(at_5, 25 * at_1)  # same soft targets, T^2 = 25


def test_fp16_logits_with_extreme_values_stay_finite():
    s = torch.tensor([[30000.0, -30000.0, 0.0]]).half()
    t = torch.tensor([[-30000.0, 30000.0, 0.0]]).half()
    naive = F.kl_div(torch.softmax(s.float(), 1).half().log(), torch.softmax(t.float(), 1).half(), reduction="batchmean")
    assert not torch.isfinite(naive)  # softmax().log() in fp16 underflows
    loss = kd_loss(s, t, temperature=1.0, alpha=1.0)
    assert torch.isfinite(loss) and loss.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert kd_loss(torch.randn(4, 3), torch.randn(4, 3), temperature=2.0, alpha=1.0).dtype == torch.float32


def test_several_teachers_share_the_gradient_and_differ_by_a_jensen_gap():
    g = torch.Generator().manual_seed(2)
    s = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    teachers = [torch.randn(6, 4, generator=g, dtype=torch.float64) for _ in range(3)]
    weights = [1.0, 2.0, 1.0]
    probs = kd_loss(s, teachers, temperature=2.0, alpha=1.0, teacher_weights=weights, combine="probs")
    kls = kd_loss(s, teachers, temperature=2.0, alpha=1.0, teacher_weights=weights, combine="kl")
    (grad_probs,) = torch.autograd.grad(probs, s)
    (grad_kls,) = torch.autograd.grad(kls, s)
    torch.testing.assert_close(grad_probs, grad_kls)
    assert probs < kls
    mean_probs = sum(w / 4 * torch.softmax(t / 2, 1) for w, t in zip(weights, teachers))
    expected = 4 * (mean_probs * (mean_probs.log() - torch.log_softmax(s / 2, 1))).sum(1).mean()
    torch.testing.assert_close(probs, expected)


def test_bad_input_is_refused():
    s, t, y = torch.randn(4, 3), torch.randn(4, 3), torch.randint(0, 3, (4,))
    for temperature in (0.0, -1.0, float("nan")):
        with pytest.raises(ConfigError, match="temperature must be a positive number"):
            kd_loss(s, t, y, temperature=temperature)
    for alpha in (-0.1, 1.5):
        with pytest.raises(ConfigError, match="alpha must be in \\[0, 1\\]"):
            kd_loss(s, t, y, alpha=alpha)
    with pytest.raises(DataError, match=r"student logits \(4, 3\) and teacher logits \(4, 5\) differ"):
        kd_loss(s, torch.randn(4, 5), y)
    with pytest.raises(ConfigError, match="no targets were given"):
        kd_loss(s, t, alpha=0.5)
    with pytest.raises(ConfigError, match="teacher_weights needs 2 positive numbers"):
        kd_loss(s, [t, t], y, teacher_weights=[1.0])
