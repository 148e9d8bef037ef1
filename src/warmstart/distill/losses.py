"""Knowledge-distillation loss: temperature-scaled KL to the teacher's soft labels, plus hard-label cross-entropy."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from warmstart._runtime import NO_CONTEXT, device_type_of
from warmstart.errors import ConfigError, DataError

COMBINE = ("probs", "kl")


def check_kd_options(temperature: float, alpha: float) -> None:
    """Raise a :class:`ConfigError` for ``temperature <= 0`` or ``alpha`` outside [0, 1]."""
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature <= 0:
        raise ConfigError(f"temperature must be a positive number, got {temperature!r} (Hinton et al. use 2 to 20)")
    if not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be in [0, 1] (the weight of the distillation term), got {alpha!r}")


def check_logits(student: torch.Tensor, teacher: torch.Tensor) -> None:
    """Raise a :class:`DataError` when student and teacher logits differ in shape (batch or class count)."""
    if student.shape != teacher.shape:
        raise DataError(f"student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} differ in "
                        "shape; the student needs as many outputs as the teacher has classes")


def kd_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor | Sequence[torch.Tensor],
             targets: torch.Tensor | None = None, temperature: float = 4.0, alpha: float = 0.9,
             teacher_weights: Sequence[float] | None = None, combine: str = "probs") -> dict[str, torch.Tensor]:
    """The terms of :func:`kd_loss`: ``{"loss", "kd", "ce"}`` (``kd`` already includes ``T^2``; no ``ce`` without targets)."""
    check_kd_options(temperature, alpha)
    if targets is None and alpha != 1.0:
        raise ConfigError(f"alpha={alpha} weights a hard-label term, but no targets were given; pass targets or alpha=1")
    teachers = [teacher_logits] if isinstance(teacher_logits, torch.Tensor) else list(teacher_logits)
    if combine not in COMBINE:
        raise ConfigError(f"combine must be 'probs' or 'kl', got '{combine}'")
    weights = _normalised(teacher_weights, len(teachers))
    for teacher in teachers:
        check_logits(student_logits, teacher)
    t = float(temperature)
    # at least float32 even under autocast, log_softmax on both sides: softmax().log() underflows in fp16
    device_type = device_type_of(student_logits)
    with torch.autocast(device_type, enabled=False) if torch.is_autocast_enabled(device_type) else NO_CONTEXT:
        student = _at_least_float32(student_logits)
        log_student = F.log_softmax(student / t, dim=-1)
        log_teachers = [F.log_softmax(_at_least_float32(teacher) / t, dim=-1) for teacher in teachers]
        if len(teachers) == 1:
            kd = F.kl_div(log_student, log_teachers[0], reduction="batchmean", log_target=True)
        elif combine == "probs":
            # one target distribution, the weighted mean of the teachers' probabilities (in log space)
            log_target = torch.logsumexp(torch.stack([lt + math.log(w) for lt, w in zip(log_teachers, weights)]), dim=0)
            kd = F.kl_div(log_student, log_target, reduction="batchmean", log_target=True)
        else:
            kd = sum(w * F.kl_div(log_student, lt, reduction="batchmean", log_target=True)
                     for lt, w in zip(log_teachers, weights))
        kd = kd * (t * t)  # always: keeps the soft-target gradients' scale independent of T
        if targets is None:  # unlabelled: no hard-label term to report
            return {"loss": kd, "kd": kd}
        ce = F.cross_entropy(student, targets)
        loss = alpha * kd + (1.0 - alpha) * ce if alpha < 1.0 else kd
    return {"loss": loss, "kd": kd, "ce": ce}


def _at_least_float32(logits: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 logits in float32; float32 and float64 as they are."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def _normalised(weights: Sequence[float] | None, count: int) -> list[float]:
    if weights is None:
        return [1.0 / count] * count
    if len(weights) != count or any(w <= 0 for w in weights):
        raise ConfigError(f"teacher_weights needs {count} positive numbers, got {list(weights)}")
    total = float(sum(weights))
    return [w / total for w in weights]


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | Sequence[torch.Tensor],
            targets: torch.Tensor | None = None, temperature: float = 4.0, alpha: float = 0.9,
            teacher_weights: Sequence[float] | None = None, combine: str = "probs") -> torch.Tensor:
    """Hinton et al.'s distillation loss, computed exactly.

    ``loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * cross_entropy(s, y)``

    where the KL is summed over classes and averaged over the batch (``reduction="batchmean"``,
    not the per-element mean), computed from ``log_softmax`` of both sides with
    ``log_target=True``, in float32 (float64 for float64 inputs) even under autocast. ``T^2`` is
    always applied, also when ``alpha`` is 0 or 1, so the soft-target gradient keeps its scale as
    ``T`` changes: the gradient of the KD term w.r.t. the student logits is
    ``alpha * T * (softmax(s / T) - softmax(t / T)) / B``.

    ``alpha`` weights the distillation term (RepDistiller's convention). torchdistill's
    ``alpha`` weights the hard-label term instead: ``alpha_here = 1 - alpha_torchdistill``.

    Several teachers (a list of logits, with ``teacher_weights``, normalised to sum to 1):
    ``combine="probs"`` (the default) distils into the weighted mean of their probabilities,
    one target distribution, so the loss is a true KL that is 0 when the student matches the
    ensemble; ``combine="kl"`` averages the per-teacher KL terms. Both give the student the same
    gradient (the teachers' entropies do not depend on the student); the values differ by the
    teachers' disagreement (a Jensen gap), which is why ``"probs"`` is the one to log.

    Args:
        student_logits: ``(B, C)`` student outputs.
        teacher_logits: ``(B, C)`` teacher outputs, or a list of them.
        targets: ``(B,)`` class indices; required unless ``alpha == 1``.
        temperature: ``T > 0``.
        alpha: weight of the distillation term, in [0, 1].
        teacher_weights: weights of several teachers.
        combine: ``"probs"`` or ``"kl"``.

    Returns:
        The scalar loss.

    Raises:
        ConfigError: ``temperature <= 0``, ``alpha`` outside [0, 1], or ``alpha < 1`` without targets.
        DataError: student and teacher logits of different shapes.

    Examples:
        >>> s, t = torch.randn(8, 10), torch.randn(8, 10)
        >>> loss = kd_loss(s, t, torch.randint(0, 10, (8,)), temperature=4.0, alpha=0.9)
    """
    return kd_terms(student_logits, teacher_logits, targets, temperature, alpha, teacher_weights, combine)["loss"]
