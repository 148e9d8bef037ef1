"""The proximal term 1/2 ||w - w0||^2 shared by pretraining and fine-tuning: anchor, penalty and prox step."""

from __future__ import annotations

import fnmatch
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from warmstart.checkpoint import load_weights
from warmstart.errors import ConfigError

MODES = ("penalty", "prox")


class Anchor:
    """The starting point ``w0``: detached copies of the anchored parameters, stored once.

    Only parameters are anchored; buffers such as BatchNorm running statistics are not.

    Args:
        tensors: parameter name -> its anchor value.

    Examples:
        >>> model = nn.Linear(3, 2)
        >>> anchor = Anchor.from_model(model, exclude=["bias"])
        >>> list(anchor.tensors)
        ['weight']
    """

    def __init__(self, tensors: Mapping[str, torch.Tensor]):
        self.tensors = {name: t.detach().clone() for name, t in tensors.items()}

    @classmethod
    def from_model(cls, model: nn.Module, include: Sequence[str] = ("*",), exclude: Sequence[str] = ()) -> Anchor:
        """Anchor ``model``'s current parameters whose names match ``include`` and not ``exclude`` (glob patterns)."""
        names = anchored_names(model, include, exclude)
        return cls({name: p for name, p in model.named_parameters() if name in names})

    @classmethod
    def from_weights(cls, source: Any, model: nn.Module | None = None) -> Anchor:
        """Anchor to saved weights (a state dict, ``.safetensors``, ``.pt`` or warmstart checkpoint).

        With ``model``, only entries that are parameters of the model are kept (buffers dropped).
        """
        tensors, _ = load_weights(source)
        if model is not None:
            params = dict(model.named_parameters())
            tensors = {k: v for k, v in tensors.items() if k in params}
        return cls(tensors)

    def to(self, device: torch.device) -> Anchor:
        """Move the anchor to ``device`` in place (once, at set-up) and return it."""
        self.tensors = {name: t.to(device) for name, t in self.tensors.items()}
        return self

    def shard_like(self, model: nn.Module) -> Anchor:
        """Shard each anchor tensor like ``model``'s parameter of that name, in place; return the anchor.

        Under ``strategy="fsdp"`` the parameters are ``DTensor`` s sharded over the processes; the
        anchor then holds one shard per process as well (no full copy of ``w0`` on any process).
        Every process must call it (rank 0's values are scattered). Other tensors are left as they are.
        """
        if not torch.distributed.is_available():
            return self
        from torch.distributed.tensor import DTensor, distribute_tensor

        params = dict(model.named_parameters())
        for name, w0 in self.tensors.items():
            param = params.get(name)
            if isinstance(param, DTensor) and not isinstance(w0, DTensor):
                self.tensors[name] = distribute_tensor(w0.to(param.device), param.device_mesh, param.placements)
        return self

    def check(self, model: nn.Module) -> None:
        """Raise a :class:`ConfigError` listing anchor entries that are not parameters of ``model`` or differ in shape."""
        params = dict(model.named_parameters())
        unknown = [n for n in self.tensors if n not in params]
        wrong = [f"{n}: anchor {tuple(t.shape)} vs model {tuple(params[n].shape)}"
                 for n, t in self.tensors.items() if n in params and t.shape != params[n].shape]
        if unknown or wrong:
            parts = ([f"not parameters of the model: {', '.join(unknown[:10])}"] if unknown else []) + (
                [f"shape mismatches: {'; '.join(wrong[:10])}"] if wrong else [])
            raise ConfigError(f"the anchor does not match the model ({'; '.join(parts)}). Build it from this model "
                              "(Anchor.from_model) or from weights with the same names, and exclude changed layers.")

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The anchor tensors, for checkpoints."""
        return self.tensors


def proximal_penalty(model: nn.Module, anchor: Anchor | Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``1/2 * sum over anchored parameters of ||w - w0||^2`` (differentiable).

    With sharded parameters and anchor (``DTensor`` s, under FSDP) each process sums its shards
    and the result is the all-reduced total, a plain tensor equal on every process.

    Args:
        model: the model holding ``w``.
        anchor: ``w0`` by parameter name.

    Returns:
        A scalar tensor.

    Examples:
        >>> model = nn.Linear(2, 1, bias=False)
        >>> w0 = {"weight": model.weight.detach() - 1.0}
        >>> proximal_penalty(model, w0).item()
        1.0
    """
    tensors = anchor.tensors if isinstance(anchor, Anchor) else anchor
    params = dict(model.named_parameters())
    terms = [(params[name] - w0).pow(2).sum() for name, w0 in tensors.items()]
    if not terms:
        return torch.zeros(())
    penalty = 0.5 * torch.stack(terms).sum()
    return penalty.full_tensor() if hasattr(penalty, "full_tensor") else penalty  # a DTensor: sum over the shards


class ProximalTerm:
    """Adds the anchor term of ``J(w) = 1/2 ||w - w0||^2 + (lam / n) sum_i f_i`` to an optimizer's steps.

    The trainer multiplies the data loss by ``lam`` before backward, so the gradients hold
    ``lam * grad(mean f)``; this class then supplies the anchor term in one of two modes:

    - ``"penalty"``: ``grad += w - w0`` in place with ``torch._foreach`` ops, so the step follows
      ``(w - w0) + lam * grad(mean f)`` (no second model, no extra forward, no autograd graph).
    - ``"prox"``: after the optimizer's step ``v = w - eta * lam * grad(mean f)``, the exact
      proximal step of ``h(w) = 1/2 ||w - w0||^2``: ``w = argmin_u 1/2 ||u - v||^2 + eta/2 ||u - w0||^2
      = (v + eta * w0) / (1 + eta)``, applied as ``lerp(v, w0, eta / (1 + eta))``. For SGD with
      momentum ``mu`` and dampening ``d`` the step size is ``eta = lr * (1 - d) / (1 - mu)``, the
      length of its steady-state step, so the fixed point ``w* - w0 = -lam * grad(mean f)(w*)``
      is the minimiser of ``J``. Adaptive optimizers (Adam, AdamW) scale each coordinate's step by
      ``lr / (sqrt(v_hat) + eps)``; a Euclidean prox with the scalar ``lr`` would converge to a
      different point, so the prox is taken in the optimizer's diagonal metric, with
      ``eta_i = lr / (sqrt(v_hat_i) + eps)`` per coordinate. Other optimizers: use ``"penalty"``.

    Unanchored trainable parameters (a new head) get ``beta/2 * ||w||^2`` when ``beta > 0``
    (the L2-SP form): ``grad += beta * w`` (penalty) or ``w = v / (1 + eta * beta)`` (prox).
    A parameter group may carry its own ``"lam"``; its data gradients are rescaled to it.

    Args:
        model: the model being trained.
        anchor: ``w0``; every name must be a parameter of ``model`` with the same shape.
        lam: weight of the data term (> 0); the default for groups without ``"lam"``.
        mode: ``"penalty"`` or ``"prox"``.
        beta: L2 weight toward zero for trainable parameters without an anchor.
    """

    def __init__(self, model: nn.Module, anchor: Anchor, lam: float, mode: str = "penalty", beta: float = 0.0):
        check_lam(lam)
        if mode not in MODES:
            raise ConfigError(f"unknown proximal mode '{mode}'; use 'penalty' (add w - w0 to the gradient) or "
                              "'prox' (exact proximal step after each optimizer step)")
        if beta < 0 or not math.isfinite(beta):
            raise ConfigError(f"beta must be >= 0, got {beta}")
        anchor.check(model)
        self.model, self.anchor, self.lam, self.mode, self.beta = model, anchor, float(lam), mode, float(beta)
        self._groups: list[tuple[dict[str, Any], list[nn.Parameter], list[torch.Tensor], list[nn.Parameter]]] = []

    def refresh(self, optimizer: torch.optim.Optimizer) -> None:
        """Match optimizer groups to anchors; call at fit start and whenever groups change."""
        names = {id(p): n for n, p in self.model.named_parameters()}
        self._groups = []
        for group in optimizer.param_groups:
            params = [p for p in group["params"] if id(p) in names]
            anchored = [p for p in params if names[id(p)] in self.anchor.tensors]
            free = [p for p in params if names[id(p)] not in self.anchor.tensors]
            anchors = [self.anchor.tensors[names[id(p)]] for p in anchored]
            self._groups.append((group, anchored, anchors, free))
            if group.get("weight_decay", 0) and anchored:
                warnings.warn(f"weight_decay={group['weight_decay']} pulls anchored parameters ({len(anchored)} in a group) "
                              "toward zero while the proximal term pulls them toward w0; set weight_decay=0 for them "
                              "(use beta for parameters without an anchor)", stacklevel=3)
        if self.mode == "prox":
            kind = type(optimizer).__name__
            if kind not in ("SGD", "Adam", "AdamW"):
                raise ConfigError(f"mode='prox' has a closed-form step for SGD, Adam and AdamW, not {kind}; use "
                                  "mode='penalty' with this optimizer")

    def scale_data_gradients(self) -> None:
        """Rescale data gradients of groups whose ``"lam"`` differs from the default (they hold ``self.lam * grad``)."""
        for group, anchored, _, free in self._groups:
            lam = group.get("lam", self.lam)
            if lam != self.lam:
                check_lam(lam)
                grads = [p.grad for p in anchored + free if p.grad is not None]
                if grads:
                    torch._foreach_mul_(grads, lam / self.lam)

    def before_step(self) -> None:
        """Call after unscaling, before the optimizer step: per-group lam, then the penalty gradient."""
        self.scale_data_gradients()
        if self.mode == "penalty":
            self.add_gradient()

    def after_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Call after an optimizer step that was taken (gradients still set): the prox step."""
        if self.mode == "prox":
            self.apply_prox(optimizer)

    @torch.no_grad()
    def add_gradient(self) -> None:
        """Penalty mode: ``grad += w - w0`` (and ``grad += beta * w`` for unanchored parameters)."""
        for _, anchored, anchors, free in self._groups:
            pairs = [(p, w0) for p, w0 in zip(anchored, anchors) if p.grad is not None]
            if pairs:
                grads = [p.grad for p, _ in pairs]
                torch._foreach_add_(grads, [p for p, _ in pairs])
                torch._foreach_sub_(grads, [w0 for _, w0 in pairs])
            if self.beta:
                free_with_grad = [p for p in free if p.grad is not None]
                if free_with_grad:
                    torch._foreach_add_([p.grad for p in free_with_grad], free_with_grad, alpha=self.beta)

    @torch.no_grad()
    def apply_prox(self, optimizer: torch.optim.Optimizer) -> None:
        """Prox mode: move each parameter to the proximal point after the optimizer's step."""
        for group, anchored, anchors, free in self._groups:
            live = [(p, w0) for p, w0 in zip(anchored, anchors) if p in optimizer.state or p.grad is not None]
            if isinstance(optimizer, torch.optim.SGD):
                momentum, dampening = group.get("momentum", 0.0), group.get("dampening", 0.0)
                eta = group["lr"] * ((1 - dampening) / (1 - momentum) if momentum else 1.0)
                if live:
                    torch._foreach_lerp_([p for p, _ in live], [w0 for _, w0 in live], eta / (1 + eta))
                if self.beta and free:
                    torch._foreach_div_(free, 1 + eta * self.beta)
            else:
                etas = _adam_step_sizes(optimizer, group, [p for p, _ in live])
                if live:
                    weights = [e / (1 + e) for e in etas]
                    torch._foreach_lerp_([p for p, _ in live], [w0 for _, w0 in live], weights)
                if self.beta and free:
                    free_live = [p for p in free if p in optimizer.state]
                    for p, eta in zip(free_live, _adam_step_sizes(optimizer, group, free_live)):
                        p.div_(1 + eta * self.beta)


def _adam_step_sizes(optimizer: torch.optim.Optimizer, group: dict[str, Any], params: list[nn.Parameter]) -> list[torch.Tensor]:
    """Per-coordinate step sizes ``lr / (sqrt(v / (1 - beta2^t)) + eps)`` of Adam/AdamW."""
    beta2, eps, lr = group["betas"][1], group["eps"], group["lr"]
    sizes = []
    for p in params:
        state = optimizer.state[p]
        step = float(state["step"])
        second = state["max_exp_avg_sq"] if group.get("amsgrad") else state["exp_avg_sq"]
        denom = (second / (1 - beta2**step)).sqrt_().add_(eps)
        sizes.append(torch.reciprocal(denom).mul_(lr))
    return sizes


def check_lam(lam: float) -> None:
    """Raise a :class:`ConfigError` unless ``lam`` is a positive finite number."""
    if not isinstance(lam, (int, float)) or isinstance(lam, bool) or not math.isfinite(lam) or lam <= 0:
        raise ConfigError(f"lam must be a positive finite number (the weight of the data term), got {lam!r}; "
                          "small lam keeps w near w0, large lam approaches plain training")


def anchored_names(model: nn.Module, include: Sequence[str] = ("*",), exclude: Sequence[str] = ()) -> set[str]:
    """Names of ``model``'s parameters matching ``include`` and not ``exclude`` (glob patterns): what an anchor covers.

    Trainers exempt these from weight decay: decay pulls toward zero, the proximal term toward ``w0``.

    Examples:
        >>> sorted(anchored_names(nn.Linear(3, 2), exclude=["bias"]))
        ['weight']
    """
    return {name for name, _ in model.named_parameters()
            if any(fnmatch.fnmatchcase(name, pat) for pat in include)
            and not any(fnmatch.fnmatchcase(name, pat) for pat in exclude)}
