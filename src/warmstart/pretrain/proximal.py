"""ProximalTrainer: train on 1/2 ||w - w0||^2 + (lam / n) sum_i f(w, x_i, y_i), keeping the weights near w0."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from warmstart.config import OptimizerConfig
from warmstart.optim import param_groups_weight_decay
from warmstart.proximal import Anchor, ProximalTerm, anchored_names, check_lam, proximal_penalty
from warmstart.trainer import Trainer


class ProximalTrainer(Trainer):
    """Train on ``J(w) = 1/2 ||w - w0||^2 + (lam / n) * sum_i f(w, x_i, y_i)``, keeping ``w`` near ``w0``.

    Each step backpropagates ``lam * mean f`` over the mini-batch, then the optimizer follows
    ``(w - w0) + lam * grad(mean f)``: the gradient of ``J`` with the sum over the data set
    estimated by the batch mean. ``J / lam = mean f + ||w - w0||^2 / (2 lam)`` has the same
    minimiser, so large ``lam`` approaches plain training and ``lam -> 0`` keeps ``w = w0``. With
    SGD, scale the learning rate like ``1 / (1 + lam * L)`` for a loss of curvature ``L``; Adam is
    insensitive to the scale. The logged ``loss`` is ``mean f`` (unscaled). See
    :class:`ProximalTerm` for the two modes (``"penalty"``, ``"prox"``).

    Args:
        model: the network (its weights when training starts are ``w0`` unless ``anchor`` is given).
        optimizer: as for :class:`warmstart.Trainer`; parameter groups may carry ``"lam"``.
        lam: weight of the data term (> 0).
        loss_fn: per-example loss ``f``, averaged over the batch (default cross-entropy).
        anchor: ``w0``: an :class:`Anchor`, a dict of tensors, or a weight file path.
        mode: ``"penalty"`` or ``"prox"``.
        beta: ``beta/2 ||w||^2`` on trainable parameters without an anchor (a new head).
        exclude: glob patterns of parameters not to anchor when ``w0`` is taken from the model.
        **kwargs: :class:`warmstart.Trainer` arguments (``max_epochs``, ``out_dir``, ...).

    Examples:
        >>> model = nn.Linear(4, 2)
        >>> trainer = ProximalTrainer(model, {"name": "sgd", "lr": 0.01}, lam=10.0, progress=False)
        >>> _ = trainer.fit([(torch.randn(8, 4), torch.randint(0, 2, (8,)))])
        >>> round(proximal_penalty(model, trainer.anchor).item(), 6) > 0
        True
    """

    def __init__(self, model: nn.Module, optimizer: Any = None, lam: float = 1.0, loss_fn: Any = None, *,
                 anchor: Anchor | Mapping[str, torch.Tensor] | str | None = None, mode: str = "penalty",
                 beta: float = 0.0, exclude: Iterable[str] = (), **kwargs: Any):
        check_lam(lam)
        if anchor is not None and not isinstance(anchor, Anchor):
            anchor = Anchor(anchor) if isinstance(anchor, Mapping) else Anchor.from_weights(anchor, model)
        self._anchor_exclude = tuple(exclude)
        self._anchored = set(anchor.tensors) if anchor is not None else anchored_names(model, exclude=self._anchor_exclude)
        super().__init__(model, optimizer, loss_fn, **kwargs)
        # under FSDP a given anchor is sharded like the parameters; one taken from the model already is
        self.anchor: Anchor | None = None if anchor is None else anchor.to(self.device).shard_like(self.unwrapped_model)
        self.proximal = None if self.anchor is None else ProximalTerm(self.unwrapped_model, self.anchor, lam, mode, beta)
        self._settings = (lam, mode, beta)

    def on_train_epoch_start(self, epoch: int) -> None:
        if self.proximal is None:  # a fresh run: w0 is the model as training starts
            self.anchor = Anchor.from_model(self.unwrapped_model, exclude=self._anchor_exclude).to(self.device)
            self.proximal = ProximalTerm(self.unwrapped_model, self.anchor, *self._settings)
        self.proximal.refresh(self.optimizer)

    def configure_param_groups(self, config: OptimizerConfig) -> list[dict[str, Any]]:
        """As the Trainer's, with the anchored weights exempt from weight decay (it would change the objective)."""
        return param_groups_weight_decay(self.unwrapped_model, config.weight_decay, no_decay=self._anchored)

    def backward(self, loss: torch.Tensor) -> bool:
        return super().backward(loss * self.proximal.lam)

    def on_before_optimizer_step(self) -> None:
        self.proximal.before_step()

    def on_after_optimizer_step(self) -> None:
        self.proximal.after_step(self.optimizer)

    def on_train_epoch_end(self, epoch: int) -> dict[str, float]:
        with torch.no_grad():
            return {"proximal_penalty": float(proximal_penalty(self.unwrapped_model, self.anchor))}

    def extra_state(self) -> dict[str, Any]:
        return {"anchor": None if self.anchor is None else self.anchor.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if state.get("anchor") is not None:
            self.anchor = Anchor(state["anchor"]).to(self.device).shard_like(self.unwrapped_model)
            self.proximal = ProximalTerm(self.unwrapped_model, self.anchor, *self._settings)
