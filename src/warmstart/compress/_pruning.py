"""Structured pruning with torch-pruning's dependency graph: remove whole channels up to a share of the parameters."""

from __future__ import annotations

import copy
import dataclasses
import difflib
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from warmstart.compress._deps import import_torch_pruning
from warmstart.compress._layers import add_to_record, count_parameters, layer_widths, module_names
from warmstart.compress._prune_checks import (as_tensors, check_depthwise, check_layers, check_model, keep_ties,
                                              prunable_layers, tied_parameters, unfreeze)
from warmstart.errors import ConfigError
from warmstart.heads import find_head

IMPORTANCES = ("magnitude", "l1", "taylor", "lamp", "fpgm", "random")  # the channel scores prune(importance=...) takes
_SCAN = tuple(step / 20 for step in range(1, 20))  # channel ratios 0.05 ... 0.95
_BISECTIONS = 8
_REACH_TOLERANCE = 0.02

Example = torch.Tensor | tuple[torch.Tensor, ...]
RecoverFn = Callable[[nn.Module, int], Any]


@dataclasses.dataclass
class LayerChange:
    """Widths of one Linear or convolution before and after pruning.

    Attributes:
        name: module path.
        before: ``(inputs, outputs)`` before pruning.
        after: ``(inputs, outputs)`` after pruning.
    """

    name: str
    before: tuple[int, int]
    after: tuple[int, int]


@dataclasses.dataclass
class PruneReport:
    """What :func:`prune` did.

    Attributes:
        target_ratio: the share of parameters asked to be removed.
        channel_ratios: per step, torch-pruning's channel ratio that came closest to the step's
            share (of each layer's channels, or of all channels with global pruning).
        params_before: parameters of the model given.
        params_after: parameters of the pruned model.
        macs_before: multiply-accumulates of one sample of the example input, before.
        macs_after: the same, after.
        importance: how channels were scored.
        global_pruning: whether channels were ranked across layers.
        steps: pruning steps.
        ignored: modules whose outputs were kept (the head, and ``ignore``).
        layers: widths of every Linear and convolution before and after.
        params_per_step: parameters after each step.
    """

    target_ratio: float
    channel_ratios: list[float]
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    importance: str
    global_pruning: bool
    steps: int
    ignored: list[str]
    layers: list[LayerChange]
    params_per_step: list[int]

    @property
    def achieved_ratio(self) -> float:
        """The share of parameters removed: ``1 - params_after / params_before``."""
        return 1 - self.params_after / self.params_before

    def __str__(self) -> str:
        rows = [f"pruned {self.achieved_ratio:.1%} of the parameters (target {self.target_ratio:.1%}): "
                f"{self.params_before:,} -> {self.params_after:,}; MACs per sample {self.macs_before:,} -> "
                f"{self.macs_after:,}; channel ratios {', '.join(f'{c:.3f}' for c in self.channel_ratios)}, "
                f"importance '{self.importance}', "
                f"{'global' if self.global_pruning else 'per-layer'}, {self.steps} step(s)"]
        rows += [f"  {c.name:<24} in {c.before[0]:>5} -> {c.after[0]:<5} out {c.before[1]:>5} -> {c.after[1]}"
                 for c in self.layers]
        return "\n".join(rows)


@dataclasses.dataclass
class _Plan:
    """How to prune: everything but the model and the channel ratio."""

    example_input: Example
    importance: str
    ignored: list[str]
    global_pruning: bool
    round_to: int | None
    gradient_batch: tuple[Any, Any] | None
    loss_fn: Callable[..., torch.Tensor]
    ties: list[list[str]] = dataclasses.field(default_factory=list)  # names of parameters that are one tensor

    def pruner(self, model: nn.Module, channel_ratio: float) -> Any:
        """A torch-pruning pruner over ``model``; tracing it is where untraceable models fail."""
        tp = import_torch_pruning()
        try:
            pruner = tp.pruner.BasePruner(
                model, self.example_input, importance=_importance(tp, self.importance), pruning_ratio=channel_ratio,
                global_pruning=self.global_pruning, round_to=self.round_to,
                ignored_layers=[model.get_submodule(name) for name in self.ignored],
                # attention narrows each head alike, so embed_dim stays a multiple of num_heads
                num_heads={m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)})
        except Exception as err:  # torch-pruning raises whatever the traced forward raised
            raise _trace_error(model, self.example_input, f"{type(err).__name__}: {err}") from err
        _check_traced(model, pruner, self)
        check_depthwise(model, pruner.DG, self.ignored)
        return pruner

    def step(self, pruner: Any, model: nn.Module) -> None:
        """One pruning step (Taylor importance first needs the loss gradients of ``gradient_batch``)."""
        if self.importance == "taylor":
            _loss_gradients(model, self.gradient_batch, self.loss_fn)
        pruner.step()
        model.zero_grad(set_to_none=True)
        keep_ties(model, self.ties, pruner)


def prune(model: nn.Module, example_input: Example, ratio: float = 0.5, *, importance: str = "magnitude",
          ignore: Sequence[str | nn.Module] = (), steps: int = 1, global_pruning: bool = False,
          recover_fn: RecoverFn | None = None, gradient_batch: tuple[Any, Any] | None = None,
          loss_fn: Callable[..., torch.Tensor] = F.cross_entropy, round_to: int | None = None,
          ) -> tuple[nn.Module, PruneReport]:
    """Remove whole channels from a copy of ``model`` until ``ratio`` of its parameters are gone.

    torch-pruning's dependency graph removes each channel from every layer that shares it
    (through residual additions, concatenations, BatchNorm, the next layer's inputs), so the
    result is a smaller dense network that is really faster. ``ratio`` is a share of the
    *parameters*; torch-pruning's own ratio counts channels, so a short search finds, for each
    step, the channel ratio whose result comes closest, and the report gives the share achieved. The
    head (:func:`warmstart.find_head`) and the ``ignore`` modules keep all their outputs. Tied
    weights (an Embedding shared with the output Linear) stay one tensor, counted once; frozen
    layers are pruned too and stay frozen; ``nn.MultiheadAttention`` narrows as one unit.

    Args:
        model: the network (left unchanged: a deep copy is pruned).
        example_input: a batch the forward pass accepts (one sample is enough), traced to find
            the channel dependencies; a tuple for several positional inputs.
        ratio: share of parameters to remove, in (0, 1).
        importance: channel score: ``"magnitude"`` (L2 norm of the channel's weights in every
            coupled layer), ``"l1"``, ``"taylor"`` (``|weight * gradient|``, needs
            ``gradient_batch``), ``"lamp"``, ``"fpgm"`` or ``"random"``.
        ignore: modules, or their names, whose outputs must be kept (besides the head).
        steps: prune in this many steps, each removing ``ratio / steps`` of the original parameters.
        global_pruning: rank channels across all layers (layers shrink unequally) instead of
            removing the same share from every layer.
        recover_fn: called as ``recover_fn(model, step)`` between steps (not after the last),
            e.g. a short :func:`warmstart.compress.recover`.
        gradient_batch: ``(inputs, targets)`` whose loss gradients score channels for ``"taylor"``.
        loss_fn: the loss of ``gradient_batch``.
        round_to: keep channel counts multiples of this (8 or 16 suits vectorised kernels).

    Returns:
        ``(pruned model, PruneReport)``; the model carries a ``warmstart_compression`` record
        that :func:`warmstart.compress.save_compressed` stores.

    Raises:
        ConfigError: ``ratio`` outside (0, 1) or options of the wrong type, an unknown importance,
            an ``ignore`` entry not in the model, an int8 model or one with sparsity masks attached,
            a layer applied twice or a depthwise conv with a channel multiplier (each named, with the
            ``ignore=`` that keeps it whole), tied weights pruning would narrow unequally, a model
            torch-pruning cannot trace, or a ratio the model cannot reach.

    Examples:
        >>> from warmstart.models import small_cnn
        >>> pruned, report = prune(small_cnn(width=8), torch.randn(1, 1, 28, 28), ratio=0.5)
        >>> round(report.achieved_ratio, 1)
        0.5
    """
    _check_options(ratio, importance, steps, gradient_batch, round_to)
    check_model(model, example_input)
    plan = _Plan(example_input, importance, _ignored_names(model, ignore), global_pruning, round_to,
                 gradient_batch, loss_fn, tied_parameters(model))
    output_shapes = _output_shapes(model, example_input)
    check_layers(model, example_input, plan)
    pruned = copy.deepcopy(model)
    frozen = unfreeze(pruned)
    widths, params_before, macs_before = layer_widths(pruned), count_parameters(pruned), _macs(pruned, example_input)
    channel_ratios, params_per_step = _prune_in_steps(pruned, plan, ratio, steps, recover_fn)
    for name in frozen & {name for name, _ in pruned.named_parameters()}:
        pruned.get_parameter(name).requires_grad_(False)
    pruned.train(model.training)  # torch-pruning traces in eval mode and leaves the model there
    if _output_shapes(pruned, example_input) != output_shapes:  # a last layer find_head did not recognise lost outputs
        raise ConfigError(f"pruning changed the output shape from {output_shapes} to "
                          f"{_output_shapes(pruned, example_input)}: the output layer was not protected; pass its "
                          f"name in ignore=")
    after = layer_widths(pruned)
    report = PruneReport(ratio, channel_ratios, params_before, params_per_step[-1], macs_before,
                         _macs(pruned, example_input), importance, global_pruning, steps, plan.ignored,
                         [LayerChange(name, widths[name], after[name]) for name in widths if name in after],
                         params_per_step)
    add_to_record(pruned, "pruned", {"params_before": params_before, "params_after": report.params_after,
                                     "example_input_shapes": [list(t.shape) for t in as_tensors(example_input)],
                                     "example_input_dtypes": [str(t.dtype) for t in as_tensors(example_input)]})
    return pruned, report


def _prune_in_steps(model: nn.Module, plan: _Plan, ratio: float, steps: int,
                    recover_fn: RecoverFn | None) -> tuple[list[float], list[int]]:
    """Prune ``model`` in place, each step removing ``ratio / steps`` of its original parameters."""
    params_before = count_parameters(model)
    channel_ratios, params_per_step = [], []
    for step in range(1, steps + 1):
        share_now = 1 - params_before * (1 - ratio * step / steps) / count_parameters(model)
        channel_ratios.append(_find_channel_ratio(model, plan, share_now) if share_now > 0 else 0.0)
        if channel_ratios[-1] > 0:  # an earlier step may already have removed this step's share
            plan.step(plan.pruner(model, channel_ratios[-1]), model)
        params_per_step.append(count_parameters(model))
        if recover_fn is not None and step < steps:
            recover_fn(model, step)
    return channel_ratios, params_per_step


def _check_options(ratio: float, importance: str, steps: int, gradient_batch: Any, round_to: int | None) -> None:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
        raise ConfigError(f"ratio is the share of parameters to remove, a number in (0, 1); got {ratio!r} (a "
                          f"{type(ratio).__name__}), e.g. ratio=0.5")
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise ConfigError(f"steps is how many pruning steps to take, a whole number >= 1; got {steps!r}")
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1):
        raise ConfigError(f"round_to keeps channel counts multiples of a whole number >= 1 (8 or 16 suits vectorised "
                          f"kernels), or None; got {round_to!r}")
    if not isinstance(importance, str):
        raise ConfigError(f"importance is the name of a channel score, one of {', '.join(IMPORTANCES)}; got "
                          f"{importance!r}")
    if not 0 < ratio < 1:
        raise ConfigError(f"ratio is the share of parameters to remove and must be in (0, 1), got {ratio}; "
                          f"e.g. ratio=0.5 removes half of them")
    if importance not in IMPORTANCES:
        match = difflib.get_close_matches(importance, IMPORTANCES, n=1)
        hint = f" (did you mean '{match[0]}'?)" if match else ""
        raise ConfigError(f"unknown importance '{importance}'{hint}; valid: {', '.join(IMPORTANCES)}")
    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")
    if importance == "taylor" and gradient_batch is None:
        raise ConfigError("importance='taylor' scores channels by |weight * gradient| and needs a labelled batch: "
                          "pass gradient_batch=(inputs, targets)")


def _importance(tp: Any, name: str) -> Any:
    scorers = {"magnitude": lambda: tp.importance.GroupMagnitudeImportance(p=2),
               "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
               "taylor": tp.importance.GroupTaylorImportance, "lamp": tp.importance.LAMPImportance,
               "fpgm": tp.importance.FPGMImportance, "random": tp.importance.RandomImportance}
    return scorers[name]()


def _ignored_names(model: nn.Module, ignore: Sequence[str | nn.Module]) -> list[str]:
    """Names of the modules whose outputs stay: ``ignore`` plus the head (and any auxiliary heads)."""
    ignored = module_names(model, ignore, "ignore")
    try:
        head = find_head(model)
        ignored += [name for name in [head.name, *head.extra] if name not in ignored]
    except ConfigError as err:
        if not ignored:  # pruning an unknown output layer would change the model's output shape
            raise ConfigError(f"cannot find the model's output layer, whose outputs must be kept ({err}); pass "
                              f"ignore=['<output layer name>']") from None
    return ignored


def _find_channel_ratio(model: nn.Module, plan: _Plan, ratio: float) -> float:
    """torch-pruning's channel ratio whose share of removed parameters comes closest to ``ratio``.

    A coarse scan finds the first channel ratio that removes enough (the share is not monotonic
    near the top: global pruning stops removing channels from layers it would empty), then a
    bisection between it and the previous scan point refines it.
    """
    total = count_parameters(model)

    def removed_share(channel_ratio: float) -> float:
        trial = copy.deepcopy(model)
        plan.step(plan.pruner(trial, channel_ratio), trial)
        return 1 - count_parameters(trial) / total

    tried = {}
    for channel_ratio in _SCAN:
        tried[channel_ratio] = removed_share(channel_ratio)
        if tried[channel_ratio] >= ratio:
            break
    else:
        most = max(tried.values())
        if most < ratio - _REACH_TOLERANCE:
            rounding = f"; round_to={plan.round_to} removes channels {plan.round_to} at a time" if plan.round_to else ""
            raise ConfigError(f"this model can lose at most {most:.1%} of its parameters by channel pruning (the "
                              f"head, the ignored layers and one channel per layer stay{rounding}); ask for ratio <= "
                              f"{most:.2f}"
                              f"{' or use global_pruning=False' if plan.global_pruning else ''}")
    high = channel_ratio
    low = max([c for c in tried if c < high], default=0.0)
    for _ in range(_BISECTIONS):
        middle = (low + high) / 2
        tried[middle] = removed_share(middle)
        low, high = (middle, high) if tried[middle] < ratio else (low, middle)
    return min(tried, key=lambda c: (abs(tried[c] - ratio), c))


def _check_traced(model: nn.Module, pruner: Any, plan: _Plan) -> None:
    """Every Linear and conv must be on the traced path from input to output, or pruning would break it."""
    traced = pruner.DG.module2node
    layers = prunable_layers(model, plan.ignored)
    # torch-pruning prunes nn.MultiheadAttention as one unit: its out_proj weight is used directly, never called
    units = [name for name, module in model.named_modules()
             if isinstance(module, nn.MultiheadAttention) and module in traced]
    unseen = [name for name, module in layers
              if module not in traced and not any(name.startswith(f"{unit}.") for unit in units)]
    if unseen:
        raise _trace_error(model, plan.example_input, f"layers {', '.join(unseen[:6])} are not on the autograd path "
                           f"from the input to the output (run under no_grad, detached, or unused for this input)")
    if not layers:
        raise ConfigError(f"{type(model).__name__} has no Linear or convolution layer to prune outside the head and "
                          f"the ignored modules ({', '.join(plan.ignored) or 'none'})")


def _trace_error(model: nn.Module, example: Example, problem: str) -> ConfigError:
    shapes = ", ".join(str(tuple(t.shape)) for t in as_tensors(example))
    return ConfigError(f"torch-pruning cannot trace {type(model).__name__} with an example input of shape {shapes}: "
                       f"{problem}. The forward pass must run on example_input with autograd on and return tensors; "
                       f"fix the example input, or prune a traceable submodule and pass the rest in ignore=")


def _loss_gradients(model: nn.Module, batch: tuple[Any, Any] | None, loss_fn: Callable[..., torch.Tensor]) -> None:
    """Gradients of the loss on ``batch``, computed in eval mode so BatchNorm statistics are not updated."""
    inputs, targets = batch  # type: ignore[misc]
    was_training = model.training
    model.eval().zero_grad(set_to_none=True)
    loss_fn(model(inputs), targets).backward()
    model.train(was_training)


def _macs(model: nn.Module, example: Example) -> int:
    """Multiply-accumulates of one sample (torch-pruning's counter runs on a copy)."""
    tp = import_torch_pruning()
    one_sample = tuple(t[:1] for t in as_tensors(example))
    macs, _ = tp.utils.count_ops_and_params(model, one_sample if len(one_sample) > 1 else one_sample[0])
    return int(macs)


def _output_shapes(model: nn.Module, example: Example) -> Any:
    """Shapes of the model's outputs on ``example`` (eval mode, no grad): the first check that it runs at all."""
    was_training = model.training
    try:
        with torch.no_grad():
            output = model.eval()(*as_tensors(example))
    except Exception as err:  # whatever the forward raises on this input
        raise _trace_error(model, example, f"the forward pass fails ({type(err).__name__}: {err})") from err
    finally:
        model.train(was_training)
    if isinstance(output, torch.Tensor):
        return tuple(output.shape)
    if isinstance(output, dict):
        return {key: tuple(value.shape) for key, value in output.items() if isinstance(value, torch.Tensor)}
    if isinstance(output, (tuple, list)):
        return [tuple(value.shape) for value in output if isinstance(value, torch.Tensor)]
    raise _trace_error(model, example, f"the forward pass returns a {type(output).__name__}, not tensors")
