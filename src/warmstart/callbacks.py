"""Callbacks for side effects only: CSV and TensorBoard logs, early stopping, best checkpoint, EMA."""

from __future__ import annotations

import csv
import importlib.util
import io
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from warmstart.checkpoint import atomic_path
from warmstart.distributed import is_main_process
from warmstart.errors import ConfigError, nearest

# The hooks receive the warmstart.Trainer. It is not imported here: the trainer imports this module.
Trainer = Any


class Callback:
    """Base class: override the hooks you need; each receives the trainer.

    Hooks, in the order the Trainer calls them: ``on_fit_start``, then per epoch
    ``on_train_epoch_start``, ``on_train_step_end`` (after every optimizer step; ``trainer.stepped``
    says whether the step was taken or skipped), ``on_log`` (every ``log_every`` steps, with host
    floats), ``on_validation_start``/``on_validation_end`` (around evaluation), ``on_epoch_end``
    (with the epoch's metrics); finally ``on_fit_end``. An epoch that ``max_steps`` stops part-way
    gets its history row and validation but no ``on_epoch_end``: resumed, the epoch ends once,
    so a resumed run's callbacks count what an uninterrupted run's count.
    ``state_dict``/``load_state_dict`` put the callback's state into checkpoints.
    """

    def on_fit_start(self, trainer: Trainer) -> None:
        """Called once before the first epoch (after a resume has been loaded)."""

    def on_train_epoch_start(self, trainer: Trainer) -> None:
        """Called at the start of each training epoch."""

    def on_train_step_end(self, trainer: Trainer) -> None:
        """Called after each optimizer step; keep it free of host syncs."""

    def on_log(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        """Called every ``log_every`` optimizer steps with the window's mean metrics."""

    def on_validation_start(self, trainer: Trainer) -> None:
        """Called before evaluation during fit."""

    def on_validation_end(self, trainer: Trainer) -> None:
        """Called after evaluation during fit."""

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        """Called after each whole epoch (and its validation) with the epoch's metrics."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """Called once after training ends."""

    def state_dict(self) -> dict[str, Any]:
        """Return the state to save in checkpoints (tensors and plain values only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the state returned by :meth:`state_dict`."""


def _metric(metrics: dict[str, float], monitor: str, owner: str) -> float:
    if monitor not in metrics:
        raise ConfigError(f"{owner} monitors '{monitor}'{nearest(monitor, metrics)}, which is not among this run's "
                          f"metrics: {', '.join(sorted(metrics))}. Pass monitor= one of those (val_* needs a val_loader).")
    return metrics[monitor]


def _improved(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value < best - min_delta if mode == "min" else value > best + min_delta


def _stopped_inside_an_epoch(trainer: Trainer) -> bool:
    """True when fit ended in an epoch that ``max_steps`` stopped part-way (its history row has a ``step``)."""
    return bool(trainer.history) and "step" in trainer.history[-1]


def _check_mode(mode: str) -> str:
    if mode not in ("min", "max"):
        raise ConfigError(f"mode must be 'min' or 'max', got '{mode}'")
    return mode


class CSVLogger(Callback):
    """Append every logged and epoch metric to ``out_dir/metrics.csv``, one row each.

    Each row is appended with one write, so a killed run leaves whole rows; the file is rewritten
    only when a new column appears (a few times per run). The row count is saved in checkpoints,
    and a resumed run first cuts the file back to the checkpoint's rows, so the file ends equal to
    an uninterrupted run's: no duplicate or missing rows.
    """

    def __init__(self, filename: str = "metrics.csv"):
        self.filename = filename
        self.columns: list[str] = []
        self.rows = 0
        self._partial_written: int | None = None
        self._resumed = False

    def _path(self, trainer: Trainer) -> Path | None:
        return None if trainer.out_dir is None or not is_main_process() else trainer.out_dir / self.filename

    def on_fit_start(self, trainer: Trainer) -> None:
        path = self._path(trainer)
        if path is not None and self._resumed:
            self._rewrite(path, self._read(path)[: self.rows])
        self._resumed = False

    def on_log(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        self._append(trainer, {"epoch": trainer.epoch + 1, "step": trainer.global_step, **metrics})

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        self._append(trainer, {"step": trainer.global_step, **metrics})

    def on_fit_end(self, trainer: Trainer) -> None:
        # the row of an epoch that max_steps stopped part-way, written after its checkpoint: resumed, the file is cut
        # back to the checkpoint's rows, so the whole epoch's row replaces it
        if _stopped_inside_an_epoch(trainer) and self._partial_written != trainer.global_step:
            self._append(trainer, {"step": trainer.global_step, **trainer.history[-1]})
            self._partial_written = trainer.global_step

    def _append(self, trainer: Trainer, row: dict[str, Any]) -> None:
        path = self._path(trainer)
        if path is None:
            return
        new_columns = [k for k in row if k not in self.columns]
        if new_columns or self.rows == 0:  # a new header: rewrite the file once (a fresh run starts a new file)
            rows = self._read(path)[: self.rows] if self.rows else []
            self.columns += new_columns
            self._rewrite(path, [*rows, row])
        else:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            try:
                os.write(fd, self._format([row], header=False).encode())
            finally:
                os.close(fd)
        self.rows += 1

    def _format(self, rows: list[dict[str, Any]], header: bool) -> str:
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=self.columns)
        if header:
            writer.writeheader()
        writer.writerows(rows)
        return text.getvalue()

    def _read(self, path: Path) -> list[dict[str, Any]]:
        if not path.exists():
            return []
        with open(path, newline="") as f:
            return [row for row in csv.DictReader(f) if None not in row]  # a row cut short by a kill has too few fields

    def _rewrite(self, path: Path, rows: list[dict[str, Any]]) -> None:
        with atomic_path(path) as tmp:
            tmp.write_text(self._format(rows, header=True))

    def state_dict(self) -> dict[str, Any]:
        return {"columns": list(self.columns), "rows": self.rows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.columns, self.rows, self._resumed = list(state["columns"]), int(state["rows"]), True


class TensorBoardLogger(Callback):
    """Write logged and epoch metrics to TensorBoard under ``out_dir/tensorboard``.

    Every epoch row is written; step rows at most ``max_rate`` per second of training, since
    TensorBoard's writer costs about 0.1 ms per scalar (with ``log_every=1`` on a small model it
    would otherwise slow training by half). ``metrics.csv`` keeps every row.

    Args:
        subdir: folder under ``out_dir``.
        max_rate: step rows written per second at most (``None``: every row).

    Raises:
        ImportError: TensorBoard is not installed (``pip install 'warmstart[tensorboard]'``).
    """

    def __init__(self, subdir: str = "tensorboard", max_rate: float | None = 20.0):
        if importlib.util.find_spec("tensorboard") is None:
            raise ImportError("TensorBoardLogger needs TensorBoard: pip install 'warmstart[tensorboard]'")
        self.subdir, self.max_rate = subdir, max_rate
        self._writer: Any = None
        self._resume_step: int | None = None
        self._last_step_row = -math.inf

    def _write(self, trainer: Trainer, prefix: str, metrics: dict[str, float]) -> None:
        if trainer.out_dir is None or not is_main_process():
            return
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            # a resumed run drops the events a crashed run wrote after its checkpoint
            purge = trainer.global_step + 1 if self._resume_step is not None else None
            self._writer = SummaryWriter(str(trainer.out_dir / self.subdir), purge_step=purge)
        for key, value in metrics.items():
            if isinstance(value, (int, float)):
                self._writer.add_scalar(f"{prefix}/{key}", value, trainer.global_step)

    def on_fit_start(self, trainer: Trainer) -> None:
        self._resume_step = trainer.global_step if trainer.global_step > 0 else None

    def on_log(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        now = time.perf_counter()
        if self.max_rate is None or now - self._last_step_row >= 1.0 / self.max_rate:
            self._last_step_row = now
            self._write(trainer, "step", metrics)

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        self._write(trainer, "epoch", metrics)
        if self._writer is not None:
            self._writer.flush()  # once per epoch: a flush per log would cost a disk write per step

    def on_fit_end(self, trainer: Trainer) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class EarlyStopping(Callback):
    """Stop training when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs.

    Examples:
        >>> stopper = EarlyStopping(monitor="val_accuracy", mode="max", patience=3)
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 5, mode: str = "min", min_delta: float = 0.0):
        self.monitor, self.patience, self.mode, self.min_delta = monitor, patience, _check_mode(mode), min_delta
        self.best: float | None = None
        self.wait = 0

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        value = _metric(metrics, self.monitor, "EarlyStopping")
        if _improved(value, self.best, self.mode, self.min_delta):
            self.best, self.wait = value, 0
        else:
            self.wait += 1
            if self.wait >= self.patience:
                trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.wait = state["best"], state["wait"]


class BestCheckpoint(Callback):
    """Save the weights to ``out_dir/best.safetensors`` whenever ``monitor`` improves.

    It saves the weights the metric was measured on: with ``EMA(evaluate=True)`` the averaged
    weights (the file's metadata says ``"weights": "averaged (EMA)"``), else the live ones.

    Examples:
        >>> best = BestCheckpoint(monitor="val_accuracy", mode="max")
    """

    def __init__(self, monitor: str = "val_loss", mode: str = "min", filename: str = "best.safetensors"):
        self.monitor, self.mode, self.filename = monitor, _check_mode(mode), filename
        self.best: float | None = None
        self.best_epoch: int | None = None

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        value = _metric(metrics, self.monitor, "BestCheckpoint")
        if not _improved(value, self.best, self.mode):
            return
        self.best, self.best_epoch = value, trainer.epoch
        if trainer.out_dir is not None:  # every rank: under FSDP the weights are gathered; rank 0 writes
            # the weights the metric was measured on: the EMA's when it validated, else the live ones
            validated = trainer.validated_state
            trainer.save_weights(trainer.out_dir / self.filename, state_dict=validated,
                                 extra={self.monitor: value, "epoch": trainer.epoch,
                                        "weights": "live" if validated is None else "averaged (EMA)"})

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]


class EMA(Callback):
    """Keep an exponential moving average of the weights: ``ema = decay * ema + (1 - decay) * w``.

    Updated after every optimizer step with one ``torch._foreach_lerp_`` over the parameters (no
    host sync); floating-point buffers (BatchNorm statistics) are copied, not averaged: after every step, and
    at the epoch's end once the strategy has averaged them over the ranks (before validation). With
    ``evaluate=True`` validation runs on the averaged weights; ``out_dir/ema.safetensors`` is
    written every epoch. Call :meth:`copy_to` to put the averaged weights into a model.

    Why not ``torch.optim.swa_utils.AveragedModel``: its ``update_parameters`` reads
    ``bool(self.n_averaged == 0)`` from a device tensor on every step (a host sync in the hot loop on
    CUDA) and it deep-copies the whole module, where this keeps one tensor per float state entry.
    The update is the same ``lerp`` as its ``get_ema_multi_avg_fn``, with the warm-up above.

    Args:
        decay: averaging factor per step; the effective decay is ``min(decay, (1 + n) / (10 + n))``
            after ``n`` steps, so early averages are not dominated by the initial weights.
        evaluate: validate with the averaged weights.

    Examples:
        >>> ema = EMA(decay=0.99)
    """

    def __init__(self, decay: float = 0.999, evaluate: bool = True):
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay, self.evaluate = decay, evaluate
        self.shadow: dict[str, torch.Tensor] = {}
        self.updates = 0
        self._live: dict[str, torch.Tensor] = {}
        self._param_names: list[str] = []
        self._buffer_names: list[str] = []

    def on_fit_start(self, trainer: Trainer) -> None:
        model = trainer.unwrapped_model
        self._live = {k: v for k, v in model.state_dict(keep_vars=True).items() if v.dtype.is_floating_point}
        param_ids = {id(p) for p in model.parameters()}
        self._param_names = [k for k, v in self._live.items() if id(v) in param_ids]
        self._buffer_names = [k for k in self._live if k not in set(self._param_names)]
        if not self.shadow:
            self.shadow = {k: v.detach().clone() for k, v in self._live.items()}

    @torch.no_grad()
    def on_train_step_end(self, trainer: Trainer) -> None:
        if not trainer.stepped:  # a step skipped for NaN/inf or by the GradScaler changed no weight: nothing to average
            return
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_([self.shadow[k] for k in self._param_names],
                             [self._live[k].detach() for k in self._param_names], 1.0 - decay)
        self._copy_buffers()

    @torch.no_grad()
    def _swap(self) -> None:
        for name, avg in self.shadow.items():
            live = self._live[name].detach()
            tmp = live.clone()
            live.copy_(avg)
            avg.copy_(tmp)

    @torch.no_grad()
    def _copy_buffers(self) -> None:
        for k in self._buffer_names:
            self.shadow[k].copy_(self._live[k])

    def on_validation_start(self, trainer: Trainer) -> None:
        self._copy_buffers()  # the statistics as the strategy has just averaged them over the ranks
        if self.evaluate and self.shadow:
            self._swap()

    def on_validation_end(self, trainer: Trainer) -> None:
        if self.evaluate and self.shadow:
            self._swap()
            trainer.validated_state = self.averaged_state(trainer.unwrapped_model)

    def averaged_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """``model``'s state dict with the averaged weights (non-float buffers as the model has them)."""
        return {name: self.shadow.get(name, value) for name, value in model.state_dict().items()}

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        self._save(trainer)

    def on_fit_end(self, trainer: Trainer) -> None:
        if _stopped_inside_an_epoch(trainer):  # max_steps stopped the run part-way: its averaged weights too
            self._save(trainer)

    def _save(self, trainer: Trainer) -> None:
        self._copy_buffers()  # averaged over the ranks at the epoch's end (also when there was no validation)
        if trainer.out_dir is not None:  # every rank: under FSDP the averaged shards are gathered; rank 0 writes
            trainer.save_weights(trainer.out_dir / "ema.safetensors", state_dict=self.shadow,
                                 extra={"ema_decay": self.decay})

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        """Load the averaged weights into ``model`` (its non-float buffers are left as they are)."""
        model.load_state_dict(self.shadow, strict=False)

    def state_dict(self) -> dict[str, Any]:
        return {"shadow": self.shadow, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device_of = {k: v.device for k, v in self._live.items()}
        self.shadow = {k: v.to(device_of.get(k, v.device)) for k, v in state["shadow"].items()}
        self.updates = state["updates"]
