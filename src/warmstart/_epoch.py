"""The epoch in progress and its metric window: accumulation windows, loss rows and checks kept on the device."""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch

from warmstart.distributed import all_reduce_max, all_reduce_sum, is_distributed
from warmstart.errors import ConfigError, DataError, NonFiniteLossError


def accumulation_windows(batches: Iterator[Any], accumulate: int, total: int | None,
                         start: int = 0) -> Iterator[tuple[Any, bool, int]]:
    """Yield ``(micro_batch, ends_window, window_length)`` for every micro-batch from index ``start``.

    A window is ``accumulate`` consecutive micro-batches counted from the epoch's start and makes
    one optimizer step; the epoch's last window may be shorter. Its true length scales the loss
    (so a short window is not divided by ``accumulate``) and ``ends_window`` marks the micro-batch
    whose backward must all-reduce under DDP. With a known ``total`` both follow from the count; a
    loader without ``len()`` is read one window ahead, so both are known before the window's first
    backward.

    Examples:
        >>> [(b, end, n) for b, end, n in accumulation_windows(iter("abcde"), 2, None)]
        [('a', False, 2), ('b', True, 2), ('c', False, 2), ('d', True, 2), ('e', True, 1)]
    """
    if accumulate == 1:  # one micro-batch per step: nothing to count
        for batch in batches:
            yield batch, True, 1
        return
    if total is not None:
        for index, batch in enumerate(batches, start):
            window_start = index - index % accumulate
            length = min(accumulate, total - window_start)
            yield batch, index + 1 == window_start + length, length
        return
    while window := list(itertools.islice(batches, accumulate)):
        for position, batch in enumerate(window, start=1):
            yield batch, position == len(window), len(window)


class EpochState:
    """Everything a mid-epoch checkpoint must carry so that a resumed epoch ends as an uninterrupted one would.

    Loss terms of each micro-batch stay on the device as ``pending`` rows until the log interval
    reads them (the only host sync); read rows are added to ``sums``, which give the epoch's
    ``train_*`` means. ``rng_at_start`` is the RNG state the epoch's data order was drawn from.

    Attributes:
        batches: micro-batches trained in this epoch.
        samples: samples in them.
        steps: optimizer steps taken in this epoch (skipped ones excluded).
        skipped: steps skipped for a non-finite loss in this epoch.
        term_names: names of the loss terms, in row order.
        pending: rows not read yet, one tuple of 0-dim tensors per micro-batch.
        sums: per-term sums of the rows already read.
        rows: number of rows in ``sums``.
        window_first_step: the global step the current log window started after.
        epoch: the epoch (from 0) and ``accumulate``: micro-batches per step, to name a failing step.
        rng_at_start: the RNG snapshot before the epoch's loader was iterated.
    """

    def __init__(self, window_first_step: int = 0, epoch: int = 0, accumulate: int = 1):
        self.epoch, self.accumulate = epoch, accumulate
        self.batches = self.samples = self.steps = self.skipped = self.rows = 0
        self.term_names: tuple[str, ...] = ()
        self.pending: list[tuple[torch.Tensor, ...]] = []
        self.sums: torch.Tensor | None = None
        self.window_first_step = window_first_step
        self.rng_at_start: dict[str, Any] | None = None

    def record(self, terms: dict[str, torch.Tensor]) -> None:
        """Keep one micro-batch's detached loss terms until the next read (no kernel, no sync)."""
        names = tuple(terms)
        if names != self.term_names:
            if self.pending or self.sums is not None:
                raise ConfigError(f"compute_loss returned terms {list(names)} after {list(self.term_names)}; "
                                  "return the same terms every step")
            self.term_names = names
        self.pending.append(tuple(terms.values()))

    def take_pending(self) -> torch.Tensor | None:
        """The pending rows as one ``(rows, terms)`` float tensor (``None`` if there are none), and forget them."""
        if not self.pending:
            return None
        window = torch.stack([t for row in self.pending for t in row]).view(len(self.pending), -1)
        self.pending = []
        return window if window.dtype is torch.float32 else window.float()

    def raise_nonfinite(self, window: torch.Tensor) -> None:
        """Raise for the first non-finite row of a window just read (its step and terms named)."""
        finite_rows = torch.isfinite(window).all(dim=1).tolist()
        first = finite_rows.index(False) if False in finite_rows else 0
        step = self.window_first_step + first // self.accumulate + 1
        values = dict(zip(self.term_names, window[first].tolist()))
        shown = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
        raise NonFiniteLossError(
            f"non-finite loss at step {step} (epoch {self.epoch + 1}): {shown}. Lower the learning rate, clip "
            "gradients (grad_clip=1.0), prefer precision='bf16' to '16', or pass nonfinite='skip' to skip such steps.")

    def add_read(self, window_sums: torch.Tensor, rows: int) -> None:
        """Add the sums of ``rows`` rows that were just read."""
        self.sums = window_sums if self.sums is None else self.sums + window_sums
        self.rows += rows

    def state_dict(self) -> dict[str, Any]:
        """The state as tensors and plain values (the pending rows stacked, without a host sync)."""
        pending = None
        if self.pending:
            pending = torch.stack([t for row in self.pending for t in row]).float().view(len(self.pending), -1)
        return {"batches": self.batches, "samples": self.samples, "steps": self.steps, "skipped": self.skipped,
                "rows": self.rows, "term_names": list(self.term_names), "pending": pending, "sums": self.sums,
                "window_first_step": self.window_first_step, "rng_at_start": self.rng_at_start}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], device: torch.device, epoch: int = 0,
                        accumulate: int = 1) -> EpochState:
        """Rebuild the state saved by :meth:`state_dict`, its tensors on ``device``."""
        restored = cls(state["window_first_step"], epoch, accumulate)
        restored.batches, restored.samples, restored.steps = state["batches"], state["samples"], state["steps"]
        restored.skipped, restored.rows = state["skipped"], state["rows"]
        restored.term_names = tuple(state["term_names"])
        restored.sums = None if state["sums"] is None else state["sums"].to(device)
        if state["pending"] is not None:
            restored.pending = [tuple(row.to(device).unbind()) for row in state["pending"]]
        restored.rng_at_start = state["rng_at_start"]
        return restored


class DeviceChecks:
    """Invariants checked on the device every step and read on the host only at the log interval.

    Each step hands in a 0-dim tensor per check; it is kept as it is (no kernel, no wait for the
    device) and the values are folded into their maximum (or minimum) when read, or every
    ``fold_every`` values so that a long log interval holds few tensors. The trainer reads every
    check together with its loss window (the one host sync of a log interval, and before it writes
    a checkpoint); a check's ``error`` turns the value read into the exception to raise, or
    ``None`` when it is fine.

    Examples:
        >>> checks = DeviceChecks()
        >>> too_high = lambda v: ValueError(f"label {v:g} >= 3") if v >= 3 else None
        >>> checks.update("label_max", torch.tensor(4), error=too_high)
        >>> checks.update("label_max", torch.tensor(1), error=too_high)
        >>> names, values = checks.take()
        >>> checks.failure(dict(zip(names, values.tolist())))
        ValueError('label 4 >= 3')
    """

    fold_every = 256

    def __init__(self) -> None:
        self.values: dict[str, list[torch.Tensor]] = {}
        self.lowest: set[str] = set()
        self.errors: dict[str, Callable[[float], Exception | None]] = {}

    def update(self, name: str, value: torch.Tensor, *, error: Callable[[float], Exception | None],
               lowest: bool = False) -> None:
        """Keep ``value`` under ``name``; its running maximum (``lowest``: minimum) is what is read."""
        if value.requires_grad:
            value = value.detach()
        kept = self.values.get(name)
        if kept is None:
            self.values[name] = [value]
            self.errors[name] = error
            if lowest:
                self.lowest.add(name)
            return
        kept.append(value)
        if len(kept) >= self.fold_every:
            self.values[name] = [self._fold(name, kept)]

    def _fold(self, name: str, kept: list[torch.Tensor]) -> torch.Tensor:
        stacked = torch.stack(kept)
        return stacked.amin() if name in self.lowest else stacked.amax()

    def take(self) -> tuple[tuple[str, ...], torch.Tensor | None]:
        """The names (sorted) and their values as one tensor, minima negated so that every entry reduces by max.

        Returns ``None`` values when no check ran; the checks start afresh.
        """
        names = tuple(sorted(self.values))
        if not names:
            return names, None
        values = []
        for name in names:
            kept = self.values[name]
            value = kept[0] if len(kept) == 1 else self._fold(name, kept)
            values.append(-value if name in self.lowest else value)
        self.values = {}
        stacked = torch.stack(values)  # integer and floating values promote together
        return names, stacked if stacked.dtype is torch.float32 else stacked.float()

    def failure(self, values: dict[str, float]) -> Exception | None:
        """The first error among values read back from :meth:`take` (minima un-negated here), or ``None``."""
        for name, value in values.items():
            error = self.errors[name](-value if name in self.lowest else value)
            if error is not None:
                return error
        return None


class MetricWindow:
    """The current log window: loss rows and device checks, kept on the device and read in one host sync.

    Every ``log_every`` steps (and at an epoch's end) :meth:`read` sums the pending loss rows and
    reads every check together, over all ranks; :meth:`verify` reads the checks alone (before a
    checkpoint is written, and after the first batch, so typical mistakes fail at step 1).

    Attributes:
        checks: the device-side checks (labels in range, and what subclasses add).
        clamp_on_cpu: clamp class indices on the CPU too (under ``torchrun``), see :meth:`check_labels`.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.checks = DeviceChecks()
        self.clamp_on_cpu = is_distributed()  # the trainer sets it again once fit has joined the process group
        self._labels: list[tuple[int, torch.Tensor]] = []
        self._folds: list[Callable[[], None]] = []

    def fold_before_read(self, fold: Callable[[], None]) -> None:
        """Call ``fold`` before every read of the checks: a check that keeps per-step tensors turns them into
        ``checks.update`` values there, so its work per step is only what it must keep."""
        self._folds.append(fold)

    def _fold(self) -> None:
        self._fold_labels()
        for fold in self._folds:
            fold()

    def check_labels(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Keep a batch's class indices for the next read; return targets safe to index with.

        No kernel runs here: the targets are kept as they are (a reference, beside the class count
        of the output that scores them) and checked together when the window is read, with one
        ``aminmax`` over all of them, against the count each batch saw (so a model whose output count
        changes is checked right). On a GPU the targets are clamped into ``[0, C)``, so a kernel never
        asserts (which would end the process) before the check is read; the read then raises. On
        the CPU they are returned as they are: a loss that indexes with them raises at once, and
        the trainer then reads the checks to name the label (:meth:`failure`). Under ``torchrun``
        (``clamp_on_cpu``) they are clamped on the CPU too: every rank must reach the read together,
        not one fail alone.
        """
        classes = output.shape[-1]
        labels = self._labels
        labels.append((classes, target))
        if len(labels) >= DeviceChecks.fold_every:
            self._fold_labels()
        if target.is_cpu and not self.clamp_on_cpu:
            return target
        return target.clamp(0, classes - 1)

    def _fold_labels(self) -> None:
        """Turn the kept targets into the two label checks of each class count (one ``aminmax`` per count)."""
        by_count: dict[int, list[torch.Tensor]] = {}
        for classes, target in self._labels:  # (B,) class indices
            by_count.setdefault(classes, []).append(target)
        self._labels = []
        for classes, targets in by_count.items():
            labels = targets[0] if len(targets) == 1 else torch.cat(targets)
            if not labels.numel():  # only empty batches
                continue
            high_name, too_high, low_name, too_low = _label_checks(classes)
            low, high = torch.aminmax(labels)
            self.checks.update(high_name, high, error=too_high)
            self.checks.update(low_name, low, error=too_low, lowest=True)

    def read(self, state: EpochState) -> dict[str, float]:
        """Read the pending loss rows and checks (one sync); return the window's mean of each loss term.

        Raises:
            DataError: a device check failed (e.g. a label out of range).
            NonFiniteLossError: a NaN/inf loss in the window (its step is ``state``'s window start + 1).
        """
        window = state.take_pending()
        self._fold()
        names, checks = self.checks.take()
        distributed = is_distributed()
        parts = []
        if window is not None:
            sums = window.sum(0)
            # across ranks the mean is over every rank's rows, so their count is summed beside the terms
            parts.append(all_reduce_sum(torch.cat([sums, sums.new_tensor([float(window.shape[0])])]))
                         if distributed else sums)
        if checks is not None:
            parts.append(all_reduce_max(checks) if distributed else checks)
        if not parts:
            return {}
        # the one sync of the interval
        values = torch.cat([p if p.device == self.device else p.to(self.device) for p in parts]).tolist()
        failure = self.checks.failure(dict(zip(names, values[len(values) - len(names):])))
        if failure is not None:
            raise failure
        if window is None:
            return {}
        state.add_read(sums, window.shape[0])
        count = values[len(state.term_names)] if distributed else window.shape[0]
        means = {name: total / count for name, total in zip(state.term_names, values)}
        if not all(math.isfinite(v) for v in means.values()):
            state.raise_nonfinite(window)
        return means

    def verify(self) -> None:
        """Read the device checks alone (one sync) and raise the first failure."""
        failure = self.failure()
        if failure is not None:
            raise failure

    def failure(self) -> Exception | None:
        """Read the device checks alone (one sync): the first failure, or ``None``."""
        self._fold()
        names, checks = self.checks.take()
        if checks is None:
            return None
        return self.checks.failure(dict(zip(names, all_reduce_max(checks).tolist())))


@functools.lru_cache(maxsize=64)
def _label_checks(classes: int) -> tuple[str, Callable[[float], DataError | None], str,
                                         Callable[[float], DataError | None]]:
    """The names and errors of the checks of the largest and smallest label for a model with ``classes`` outputs
    (built once per count)."""

    def too_high(value: float) -> DataError | None:
        if value < classes:
            return None
        return DataError(f"labels must be in [0, {classes}) for a model with {classes} outputs, but a batch has "
                         f"label {value:g}. Give the model {int(value) + 1} outputs (e.g. warmstart.finetune."
                         f"swap_head(model, num_classes={int(value) + 1})) or remap the labels.")

    def too_low(value: float) -> DataError | None:
        return None if value >= 0 else DataError(
            f"labels must be in [0, {classes}) for a model with {classes} outputs, but a batch has label "
            f"{value:g}; class indices cannot be negative. Remap the labels to 0..{classes - 1}.")

    return f"label_max/{classes}", too_high, f"label_min/{classes}", too_low
