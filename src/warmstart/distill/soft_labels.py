"""SoftLabelTrainer: train on class distributions that come with the data: human votes, or a teacher's probabilities."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from warmstart._batches import run_model, split_batch
from warmstart._runtime import device_type_of
from warmstart.distill._validation import hard_label_sums
from warmstart.distill.losses import check_kd_options
from warmstart.errors import ConfigError, DataError
from warmstart.trainer import Trainer


def soft_label_terms(logits: torch.Tensor, soft_labels: torch.Tensor, targets: torch.Tensor | None = None,
                     temperature: float = 1.0, alpha: float = 1.0) -> dict[str, torch.Tensor]:
    """Distillation toward given class distributions: ``{"loss", "kd"}`` (and ``"ce"`` with targets).

    ``loss = alpha * T^2 * KL(q_T || softmax(s / T)) + (1 - alpha) * cross_entropy(s, y)`` with
    ``q_T = softmax(log(q) / T)`` (``q`` sharpened or flattened by ``T``; for a teacher's
    probabilities ``q = softmax(t)`` this is ``softmax(t / T)``, Hinton et al.'s target), the KL
    summed over classes and averaged over the batch (``batchmean``), in float32 even under
    autocast; classes with ``q = 0`` contribute 0.

    Args:
        logits: ``(B, C)`` student outputs.
        soft_labels: ``(B, C)`` target distributions (rows of non-negative numbers summing to 1).
        targets: ``(B,)`` class indices; required unless ``alpha == 1``.
        temperature: ``T > 0``.
        alpha: weight of the soft-label term, in [0, 1].

    Raises:
        ConfigError: bad ``temperature`` or ``alpha``, or ``alpha < 1`` without targets.
        DataError: soft labels of another shape than the logits.

    Examples:
        >>> q = torch.tensor([[0.9, 0.1]])
        >>> round(float(soft_label_terms(torch.log(q), q)["loss"]), 6)
        0.0
    """
    check_kd_options(temperature, alpha)
    if targets is None and alpha != 1.0:
        raise ConfigError(f"alpha={alpha} weights a hard-label term, but the batch has no labels; pass alpha=1")
    if soft_labels.shape != logits.shape:
        raise DataError(f"soft_labels {tuple(soft_labels.shape)} and the model's outputs {tuple(logits.shape)} differ in "
                        "shape; give one probability per class for every sample")
    t = float(temperature)
    with torch.autocast(device_type=device_type_of(logits), enabled=False):
        student = logits.float()
        target = F.softmax(soft_labels.float().log() / t, dim=-1)  # log(0) = -inf -> probability 0
        kd = F.kl_div(F.log_softmax(student / t, dim=-1), target, reduction="batchmean") * (t * t)
        if targets is None:
            return {"loss": kd, "kd": kd}
        ce = F.cross_entropy(student, targets)
        return {"loss": alpha * kd + (1.0 - alpha) * ce if alpha < 1.0 else kd, "kd": kd, "ce": ce}


@torch.no_grad()
def teacher_probabilities(teacher: nn.Module, loader: Iterable[Any], temperature: float = 1.0) -> torch.Tensor:
    """``(N, C)`` ``softmax(logits / T)`` of ``teacher`` for every sample of an unshuffled loader, in the data set's order.

    The soft labels of offline distillation for a student that cannot read the teacher's inputs
    (its own tokenizer, another image size): give them to the student's data and train it with
    :class:`SoftLabelTrainer`. Batches as the Trainer takes them (``(inputs, ...)``, unlabelled
    ``(inputs,)``, or dicts of tokenized text); a text loader that sorts its rows by length
    (``dataset.order``, :func:`warmstart.data.text_loader`) is put back in the data set's order.
    The teacher runs in eval mode on the device of its parameters and is given back in the mode it had.

    Args:
        teacher: the trained network.
        loader: the samples, in a fixed order.
        temperature: ``T > 0``.

    Raises:
        ConfigError: a shuffled loader (its order would not match the data set's) or ``T <= 0``.

    Examples:
        >>> x = torch.randn(6, 4)
        >>> soft = teacher_probabilities(nn.Linear(4, 3), [(x[:4],), (x[4:],)], temperature=2.0)
        >>> soft.shape, bool(torch.allclose(soft.sum(1), torch.ones(6)))
        (torch.Size([6, 3]), True)
    """
    check_kd_options(temperature, 1.0)
    sampler = getattr(loader, "sampler", None)
    if getattr(loader, "shuffle", False) or isinstance(sampler, torch.utils.data.RandomSampler):
        raise ConfigError("teacher_probabilities needs the samples in a fixed order to give each its row: pass an "
                          "unshuffled loader (shuffle=False)")
    device = next(iter(teacher.parameters()), torch.empty(0)).device  # a parameterless teacher runs on the CPU
    was_training = teacher.training
    teacher.eval()
    try:
        parts = []
        for batch in loader:
            inputs, _ = split_batch(batch, require_target=False)
            inputs = ({k: v.to(device) for k, v in inputs.items()} if isinstance(inputs, Mapping) else inputs.to(device))
            parts.append((run_model(teacher, inputs).float() / temperature).softmax(-1).cpu())
    finally:
        teacher.train(was_training)
    probabilities = torch.cat(parts)
    order = getattr(getattr(loader, "dataset", None), "order", None)
    if order is None:
        return probabilities
    restored = torch.empty_like(probabilities)
    restored[order] = probabilities
    return restored


class SoftLabelTrainer(Trainer):
    """Train a model on per-sample class distributions carried by the batches (``soft_labels``).

    The distributions are what several human raters chose (e.g. the 10 ratings of each word in
    :func:`warmstart.data.vader_lexicon`), or a teacher's probabilities computed once over the
    training set: offline distillation, for a student that cannot read the teacher's inputs (its
    own tokenizer). The loss is :func:`soft_label_terms`; validation measures the model's
    cross-entropy against the hard labels (``val_loss``) and accuracy. Rows that are not
    distributions (negative entries, sums off 1 by more than 1e-3) are a :class:`DataError` at the
    next log interval (checked on the device, no sync per step).

    Overrides ``compute_loss`` and ``validation_step``.

    Args:
        model: the network to train.
        optimizer: as for :class:`warmstart.Trainer`.
        temperature: ``T`` of :func:`soft_label_terms`.
        alpha: weight of the soft-label term (``1 - alpha`` weights the hard labels).
        **kwargs: :class:`warmstart.Trainer` arguments.

    Examples:
        >>> model = nn.Linear(4, 2)
        >>> batch = {"input": torch.randn(8, 4), "labels": torch.randint(0, 2, (8,)),
        ...          "soft_labels": torch.full((8, 2), 0.5)}
        >>> history = SoftLabelTrainer(model, temperature=2.0, progress=False).fit([batch])
    """

    def __init__(self, model: nn.Module, optimizer: Any = None, *, temperature: float = 1.0, alpha: float = 1.0,
                 **kwargs: Any):
        check_kd_options(temperature, alpha)
        super().__init__(model, optimizer, **kwargs)
        self.temperature, self.alpha = float(temperature), float(alpha)

    def compute_loss(self, batch: Any) -> dict[str, torch.Tensor]:
        if not isinstance(batch, Mapping) or "soft_labels" not in batch:
            raise DataError("SoftLabelTrainer needs batches with 'soft_labels' (a dict with the inputs, 'labels' and "
                            "'soft_labels', as warmstart.data.text_loader makes from a TextSet with soft_labels)")
        inputs, target = split_batch(batch, require_target=self.alpha < 1.0)
        output = run_model(self.model, inputs)
        if target is not None:
            target = self.check_targets(output, target)
        self._check_distributions(batch["soft_labels"])
        terms = soft_label_terms(output, batch["soft_labels"], target, self.temperature, self.alpha)
        return {**terms, "output": output}

    def _check_distributions(self, soft: torch.Tensor) -> None:
        def not_distributions(excess: float) -> DataError | None:
            return None if excess <= 1e-3 else DataError(
                f"soft_labels must be probabilities (non-negative, each row summing to 1), but a row is off by "
                f"{excess:.3g}; normalise them (e.g. votes / votes.sum(-1, keepdim=True))")

        excess = torch.maximum((soft.sum(-1) - 1).abs().max(), (-soft).max())
        self.checks.update("soft_label_excess", excess, error=not_distributions)

    def validation_step(self, batch: Any) -> dict[str, torch.Tensor]:
        """The model against the hard labels: cross-entropy as ``loss``, and accuracy."""
        return hard_label_sums(self, batch)
