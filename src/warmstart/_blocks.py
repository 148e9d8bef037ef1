"""A model's repeated blocks (transformer layers, ResNet blocks) and activation checkpointing over them."""

from __future__ import annotations

import contextlib
import fnmatch
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import torch.utils.checkpoint
from torch import nn

from warmstart.errors import ConfigError

_CONTAINERS = (nn.ModuleList, nn.Sequential, nn.ModuleDict)


def find_blocks(model: nn.Module, wanted: Sequence[str] | None = None) -> list[tuple[str, nn.Module]]:
    """The blocks of ``model`` as ``(dotted name, module)``, outermost first, none inside another.

    Args:
        model: the network.
        wanted: class names or dotted module names (glob patterns allowed) to select; ``None``
            finds the modules whose class occurs at least twice in the model and holds layers of
            its own, containers aside: transformer layers, residual blocks (a plain
            ``nn.Sequential(Linear, ReLU, Linear)`` has none).

    Returns:
        The blocks, possibly none (for ``wanted=None``).

    Raises:
        ConfigError: an entry of ``wanted`` that matches no module (with some names that exist).

    Examples:
        >>> encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), num_layers=2)
        >>> [name for name, _ in find_blocks(encoder)]
        ['layers.0', 'layers.1']
    """
    modules = dict(model.named_modules())
    if wanted is None:
        counts = Counter(type(m) for m in modules.values())
        names = [name for name, module in modules.items() if name and counts[type(module)] >= 2 and _is_block(module)]
    else:
        names = []
        for pattern in wanted:
            matched = [name for name, module in modules.items()
                       if name and (fnmatch.fnmatchcase(name, pattern) or type(module).__name__ == pattern)]
            if not matched:
                shown = ", ".join(sorted({type(m).__name__ for m in modules.values()})[:12])
                raise ConfigError(f"fsdp block {pattern!r} matches no module of {type(model).__name__}: give a module "
                                  f"class, a class name (this model has {shown}) or a dotted module name such as "
                                  f"{_example_name(modules)!r} (glob patterns allowed)")
            names += matched
    chosen: list[str] = []
    for name in sorted(set(names), key=list(modules).index):  # model order; drop blocks inside a chosen one
        if not any(name.startswith(outer + ".") for outer in chosen):
            chosen.append(name)
    return [(name, modules[name]) for name in chosen]


def _is_block(module: nn.Module) -> bool:
    return (not isinstance(module, _CONTAINERS) and any(True for _ in module.children())
            and any(True for _ in module.parameters()))


def _example_name(modules: dict[str, nn.Module]) -> str:
    named = [name for name in modules if name and any(True for _ in modules[name].children())]
    return named[0] if named else next((name for name in modules if name), "layer")


class _CheckpointedForward:
    """A block's ``forward`` run under non-reentrant ``torch.utils.checkpoint``: activations recomputed in backward.

    Set as the module's own ``forward`` attribute, so parameter names, state dicts and the hooks
    of ``nn.Module.__call__`` (FSDP's gathers among them) stay as they are.
    """

    def __init__(self, module: nn.Module):
        self.module = module  # copy.deepcopy of the model maps this to the copy

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        forward = type(self.module).forward.__get__(self.module)
        if torch.compiler.is_compiling():  # the compiled graph recomputes by itself, its buffer updates happen once
            return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False,
                                                 context_fn=self._checkpoint_contexts, **kwargs)

    def _checkpoint_contexts(self) -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
        # (forward, recomputation): checkpoint enters the second around the forward it reruns in backward
        return contextlib.nullcontext(), _restore_buffers_after(self.module)


@contextlib.contextmanager
def _restore_buffers_after(module: nn.Module) -> Iterator[None]:
    """Put ``module``'s buffers back as they were once the block inside has run (also when it stops early).

    The recomputation reruns the forward in train mode, so without this BatchNorm would update
    ``running_mean``, ``running_var`` and ``num_batches_tracked`` a second time per step (with
    ``momentum=None`` the cumulative average too). Its output is unchanged: in train mode it
    normalizes by the batch statistics, which do not read the buffers. Every buffer is saved and
    put back: version counters cannot tell which ones changed, as ``native_batch_norm`` updates
    the statistics in place without bumping theirs.
    """
    buffers = list(module.buffers())
    saved = [buffer.clone() for buffer in buffers]  # a block's buffers are small next to its activations
    try:
        yield
    finally:  # checkpoint stops the recomputation by an exception once it has every saved tensor
        with torch.no_grad():
            for buffer, value in zip(buffers, saved):
                buffer.copy_(value)


def checkpoint_activations(blocks: Sequence[tuple[str, nn.Module]]) -> None:
    """Recompute the activations of each block in the backward pass instead of storing them (in place).

    Outputs and gradients are those of the plain model (the random state is replayed for dropout),
    and so are the buffers: the recomputation leaves BatchNorm's running statistics (any buffer its
    forward changes) as the first forward left them. Memory for activations drops to the blocks'
    inputs, at the cost of a second forward per block.
    """
    for _, module in blocks:
        if not isinstance(module.__dict__.get("forward"), _CheckpointedForward):
            module.forward = _CheckpointedForward(module)
