"""The shared training loop: one Trainer that the pretrain, finetune and distill trainers subclass."""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from warmstart import distributed
from warmstart._progress import ProgressReporter
from warmstart._runtime import (autocast_context, batch_size_of, check_precision, move_to_device, rng_state,
                                seed_everything, select_device, set_rng_state)
from warmstart.callbacks import Callback, CSVLogger, TensorBoardLogger
from warmstart.checkpoint import load_checkpoint, save_checkpoint, save_weights
from warmstart.config import OptimizerConfig, SchedulerConfig, TrainerConfig, from_dict, merge_options, save_config, to_dict
from warmstart.errors import CheckpointError, ConfigError, DataError, NonFiniteLossError, nearest
from warmstart.heads import describe_head
from warmstart.optim import build_optimizer, build_scheduler, param_groups_weight_decay

Batch = Any
Plateau = torch.optim.lr_scheduler.ReduceLROnPlateau


_INPUT_KEYS = ("input", "inputs", "x", "image", "features")
_TARGET_KEYS = ("target", "targets", "label", "labels", "y")


def split_batch(batch: Batch, require_target: bool = True) -> tuple[Any, Any]:
    """Return ``(inputs, target)`` from a ``(x, y, ...)`` sequence or a dict with ``input``/``target`` keys.

    Args:
        batch: the batch.
        require_target: with ``False``, an unlabelled batch (``(x,)``, or a dict without a target
            key) gives ``(inputs, None)`` instead of an error.

    Raises:
        DataError: the batch has no recognisable inputs, or no target when one is required.
    """
    inputs = target = None
    if isinstance(batch, Mapping):
        inputs = next((batch[k] for k in _INPUT_KEYS if k in batch), None)
        target = _target_of(batch)
    elif isinstance(batch, (list, tuple)) and batch:
        inputs, target = batch[0], _target_of(batch)
    if inputs is not None and (target is not None or not require_target):
        return inputs, target
    raise DataError("the default compute_loss expects batches of (inputs, target, ...) or dicts with 'input' and "
                    f"'target' keys, got {type(batch).__name__}; override compute_loss for other batch formats")


def _target_of(batch: Batch) -> Any:
    """The batch's class targets: ``batch[1]``, or a dict's ``target``/``labels``/... entry (``None`` if absent)."""
    if isinstance(batch, Mapping):
        return next((batch[k] for k in _TARGET_KEYS if k in batch), None)
    if isinstance(batch, (list, tuple)) and len(batch) >= 2:
        return batch[1]
    return None


class Trainer:
    """Train, validate and checkpoint a model; subclass it to change what a step computes.

    ``fit`` runs epochs of: move the batch to the device, ``training_step`` (forward under autocast,
    loss, backward), and every ``accumulate`` micro-batches one optimizer step. Losses stay on the
    device and are read every ``log_every`` steps; a checkpoint is written every epoch.

    Overridable methods, called directly by name (the library's own trainers override these):

    - ``compute_loss(batch)``: forward pass and loss; returns a loss tensor or a dict with
      ``"loss"``, optionally ``"output"`` (for accuracy) and other scalar terms to log.
    - ``training_step(batch)``: ``compute_loss`` under autocast, then :meth:`backward`; returns
      the detached terms.
    - ``validation_step(batch)``: per-batch *sums* of the metrics (``loss``, ``accuracy``, ...).
    - ``on_before_optimizer_step()`` / ``on_after_optimizer_step()``: edit gradients after
      unscaling and before clipping, or weights after a step that was taken.
    - ``on_train_epoch_start(epoch)`` / ``on_train_epoch_end(epoch)``: per-epoch work; the
      latter may return extra metrics for the history.
    - ``prepare_loader(loader, stage)``: replace a loader once per fit (e.g. by cached features).
    - ``configure_param_groups(config)``: parameter groups when the optimizer comes from a config.
    - ``extra_state()`` / ``load_extra_state(state)``: the subclass's own checkpoint state.
    - ``weights_metadata()``: facts saved beside the weights (``num_classes``, ``head``, config).

    Callbacks (:mod:`warmstart.callbacks`) are for side effects only. ``self.model`` is what to call
    in a forward pass (wrapped by DDP or ``torch.compile`` during fit); ``self.unwrapped_model``
    is the user's module.

    Args:
        model: the network.
        optimizer: a ``torch.optim.Optimizer``, or an :class:`OptimizerConfig` / dict naming one
            (built over ``configure_param_groups``); ``None`` means AdamW with lr 1e-3.
        loss_fn: ``loss_fn(output, target) -> Tensor`` used by the default ``compute_loss``
            (default: cross-entropy).
        scheduler: an LR scheduler (stepped after every optimizer step; a ``ReduceLROnPlateau``
            after every epoch), or a :class:`SchedulerConfig` / dict naming one.
        callbacks: extra callbacks; a CSV logger (and TensorBoard, if installed) are added when
            ``out_dir`` is set.
        config: a :class:`TrainerConfig`; keyword ``options`` override its fields.
        **options: any :class:`TrainerConfig` field: ``max_epochs``, ``precision``, ``device``,
            ``out_dir``, ``progress``, ``seed``, ``accumulate``, ``grad_clip``, ``log_every``,
            ``nonfinite``, ``compile``, ``channels_last``, ``save_every``, ``max_steps``, ``checkpoint``.

    Example:
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
        >>> data = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))] * 4
        >>> trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), max_epochs=2, progress=False)
        >>> history = trainer.fit(data)
        >>> sorted(trainer.evaluate(data))
        ['accuracy', 'loss']
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | OptimizerConfig | Mapping[str, Any] | None = None,
                 loss_fn: Callable[..., torch.Tensor] | None = None, *,
                 scheduler: Any = None, callbacks: Iterable[Callback] = (), config: TrainerConfig | None = None,
                 **options: Any):
        valid = TrainerConfig.__dataclass_fields__
        for key in options:
            if key not in valid:
                raise ConfigError(f"unknown Trainer option '{key}'{nearest(key, valid)}; valid options: {', '.join(valid)}")
        self.config = merge_options(config or TrainerConfig(), options, prefix="trainer")
        cfg = self.config
        self.device = select_device(cfg.device)
        self.precision = check_precision(cfg.precision, self.device)
        self.out_dir = None if cfg.out_dir is None else self._check_out_dir(Path(cfg.out_dir))

        self.unwrapped_model = model.to(self.device)
        if cfg.channels_last:
            self.unwrapped_model.to(memory_format=torch.channels_last)
        self.model: nn.Module = self.unwrapped_model  # DDP / compiled wrapper once fit starts
        self._ddp: nn.parallel.DistributedDataParallel | None = None
        self.loss_fn = loss_fn if loss_fn is not None else F.cross_entropy
        self.optimizer = self._make_optimizer(optimizer)
        self._scheduler_spec = scheduler
        self.scheduler: Any = scheduler if _is_scheduler(scheduler) else None
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "16" else None

        self.callbacks = list(callbacks)
        if self.out_dir is not None:
            self.callbacks.insert(0, CSVLogger())
            if _tensorboard_installed() and not any(isinstance(c, TensorBoardLogger) for c in self.callbacks):
                self.callbacks.insert(1, TensorBoardLogger())
        self.job_config: dict[str, Any] | None = None  # the whole run's config, when the CLI built this trainer
        self.epoch = 0
        self.global_step = 0
        self.skipped_steps = 0
        self.history: list[dict[str, float]] = []
        self.should_stop = False
        self.progress = ProgressReporter(enabled=False)
        self._loss_scale = 1.0
        self._skip_this_step = False
        self._targets_checked = False
        self._pending: list[tuple[torch.Tensor, ...]] = []
        self._term_names: tuple[str, ...] = ()
        self._rng_epoch_start: dict[str, Any] | None = None

    # ------------------------------------------------------------------ the loop

    def fit(self, train_loader: Iterable[Batch], val_loader: Iterable[Batch] | None = None, *,
            resume: str | os.PathLike | None = None) -> list[dict[str, float]]:
        """Train for ``max_epochs`` epochs, validating and checkpointing after each.

        Args:
            train_loader: any iterable of batches (a ``DataLoader``, a list, ...).
            val_loader: evaluated after every epoch (metrics prefixed ``val_``).
            resume: ``"last"`` continues from ``out_dir/last.pt`` when it exists, or a checkpoint path.

        Returns:
            The history: one dict of metrics per epoch (``train_loss``, ``val_loss``, ``val_accuracy``, ``lr``, ...).

        Raises:
            DataError: empty loader or labels outside the model's outputs.
            NonFiniteLossError: a NaN/inf loss (unless ``nonfinite="skip"``).
            CheckpointError: ``resume`` names an unreadable checkpoint or one of another model.
        """
        cfg = self.config
        train_loader, val_loader = self._setup_fit(train_loader, val_loader)
        skip_batches = self._start(resume)
        for cb in self.callbacks:
            cb.on_fit_start(self)
        step_callbacks = [cb for cb in self.callbacks if type(cb).on_train_step_end is not Callback.on_train_step_end]

        while self.epoch < cfg.max_epochs and not self.should_stop:
            epoch_start = time.perf_counter()
            _set_epoch(train_loader, self.epoch)
            self.model.train()
            self.on_train_epoch_start(self.epoch)
            for cb in self.callbacks:
                cb.on_train_epoch_start(self)
            # the RNG state before the loader's iterator draws its seed fixes this epoch's data order;
            # a mid-epoch checkpoint stores it so that a resume can replay the order exactly
            if skip_batches:
                set_rng_state(self._rng_epoch_start)
            else:
                self._rng_epoch_start = rng_state()
            n_batches = _length(train_loader)
            k = cfg.accumulate
            self.progress.start_epoch(self.epoch, cfg.max_epochs, None if n_batches is None else math.ceil(n_batches / k),
                                      initial=skip_batches // k)
            batches = iter(train_loader)
            for _ in range(skip_batches):
                next(batches)
            if skip_batches:
                set_rng_state(self._resume_rng)
            self._window_first_step, seen, pending, stopped_early = self.global_step, skip_batches, False, False

            for index, batch in enumerate(batches, start=skip_batches):
                batch = move_to_device(batch, self.device, cfg.channels_last)
                # micro-batches [window_start, window_start + window) make one optimizer step;
                # the last window of an epoch may be shorter, so scale by its true length
                window_start = index - index % k
                window = k if n_batches is None else min(k, n_batches - window_start)
                self._loss_scale = 1.0 / window
                last_micro = index + 1 == window_start + window
                with self._no_sync(enabled=not last_micro):
                    terms = self.training_step(batch)
                if not self._skip_this_step:
                    self._record(terms)
                seen, pending = seen + 1, not last_micro
                self._samples += batch_size_of(batch)
                if last_micro:
                    self._step(step_callbacks, batch_in_epoch=seen)
                    if cfg.max_steps is not None and self.global_step >= cfg.max_steps:
                        self.should_stop = True
                    if self.should_stop:  # max_steps, or a callback asked to stop within the epoch
                        stopped_early = n_batches is None or seen < n_batches
                        break
            if pending:  # a loader without len() ended inside an accumulation window
                self._step(step_callbacks, batch_in_epoch=seen)
            if seen == 0:
                raise DataError("the training loader produced no batches this epoch; check the dataset is not empty "
                                "and that batch_size is not larger than it with drop_last=True")
            skip_batches = 0
            if stopped_early:  # max_steps ended the run inside an epoch: save where it stopped, no epoch metrics
                self._read_window()
                self._epoch_sums, self._epoch_rows = None, 0
                if self.out_dir is not None and cfg.checkpoint:
                    self._save_checkpoint(batch_in_epoch=seen)
                break
            self._end_epoch(val_loader, time.perf_counter() - epoch_start)

        self.progress.close()
        for cb in self.callbacks:
            cb.on_fit_end(self)
        return self.history

    def _step(self, step_callbacks: Sequence[Callback], *, batch_in_epoch: int) -> None:
        """One optimizer step and the bookkeeping around it (logging, mid-epoch checkpoints)."""
        cfg = self.config
        self._optimizer_step()
        self.global_step += 1
        for cb in step_callbacks:
            cb.on_train_step_end(self)
        self.progress.step()
        if self.global_step % cfg.log_every == 0:
            self._log_window()
        if cfg.save_every and self.global_step % cfg.save_every == 0:
            self._save_checkpoint(batch_in_epoch=batch_in_epoch)

    def _optimizer_step(self) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        self.on_before_optimizer_step()
        if self.config.grad_clip is not None:
            params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip, foreach=True)
        stepped = True
        if self.scaler is not None:
            # GradScaler skips the step when it finds inf/NaN gradients and then lowers its scale;
            # it reads found_inf on the host anyway, so comparing scales adds no new sync point.
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            stepped = self.scaler.get_scale() >= scale
        else:
            self.optimizer.step()
        if stepped:
            self.on_after_optimizer_step()
            if self.scheduler is not None and not isinstance(self.scheduler, Plateau):
                self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    # ------------------------------------------------------------------ overridable methods

    def compute_loss(self, batch: Batch) -> torch.Tensor | dict[str, torch.Tensor]:
        """Forward pass and loss: ``loss_fn(model(inputs), target)``.

        Returns:
            ``{"loss": scalar, "output": model output}``; overrides may add scalar terms to log.
        """
        inputs, target = split_batch(batch)
        output = self.model(inputs)
        if not self._targets_checked:
            self.check_targets(output, target)
        return {"loss": self.loss_fn(output, target), "output": output}

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Run ``compute_loss`` under autocast and backpropagate; return the detached loss terms."""
        with self.autocast():
            out = self.compute_loss(batch)
        terms = _loss_terms(out)
        self.backward(terms["loss"])
        return {name: value.detach() for name, value in terms.items()}

    def validation_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Return per-batch sums: each loss term times the batch size, ``accuracy`` as correct counts, ``count``.

        Accuracy is counted when the output is ``(B, C)`` scores and the target ``(B,)`` class indices.
        """
        with self.autocast():
            out = self.compute_loss(batch)
        output = out.get("output") if isinstance(out, Mapping) else None
        return classification_sums(output, _target_of(batch), _loss_terms(out), self.device, batch_size_of(batch))

    def on_before_optimizer_step(self) -> None:
        """Edit gradients before the optimizer step (after unscaling, before clipping)."""

    def on_after_optimizer_step(self) -> None:
        """Edit weights after an optimizer step that was actually taken (gradients are still set)."""

    def on_train_epoch_start(self, epoch: int) -> None:
        """Per-epoch set-up before the first batch (``epoch`` counts from 0)."""

    def on_train_epoch_end(self, epoch: int) -> dict[str, float]:
        """Per-epoch work after the last batch; return extra metrics for the history."""
        return {}

    def prepare_loader(self, loader: Iterable[Batch] | None, stage: str) -> Iterable[Batch] | None:
        """Replace a loader once per fit (``stage`` is ``"train"`` or ``"val"``); the default returns it."""
        return loader

    def configure_param_groups(self, config: OptimizerConfig) -> list[dict[str, Any]]:
        """Parameter groups for an optimizer built from ``config``: no weight decay on 1-D parameters."""
        return param_groups_weight_decay(self.unwrapped_model, config.weight_decay)

    def extra_state(self) -> dict[str, Any]:
        """State a subclass adds to checkpoints (tensors and plain values)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`extra_state`; called before the optimizer state is loaded."""

    def weights_metadata(self) -> dict[str, Any]:
        """Facts saved beside the weights: model class, head module and class count, epoch, config."""
        return {"model_class": type(self.unwrapped_model).__name__, **describe_head(self.unwrapped_model),
                "epoch": self.epoch, "global_step": self.global_step, "config": self.resolved_config()}

    # ------------------------------------------------------------------ helpers subclasses use

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context of this trainer's precision (a no-op for ``"32"``)."""
        return autocast_context(self.precision, self.device)

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate ``loss`` scaled for accumulation (and by the GradScaler under fp16).

        With ``nonfinite="skip"`` a NaN/inf loss is not backpropagated and the step is counted
        in ``skipped_steps``; this reads the loss on the host (and agrees across ranks).
        """
        self._skip_this_step = False
        if self.config.nonfinite == "skip":
            bad = distributed.all_reduce_sum((~torch.isfinite(loss.detach())).float())
            if bad.item() > 0:  # host sync, only in skip mode
                self._skip_this_step = True
                self.skipped_steps += 1
                return
        if self._loss_scale != 1.0:
            loss = loss * self._loss_scale
        if self.scaler is not None:
            loss = self.scaler.scale(loss)
        loss.backward()

    def check_targets(self, output: Any, target: Any) -> None:
        """Raise :class:`DataError` if class-index targets fall outside the model's outputs (one host sync)."""
        self._targets_checked = True
        if not _is_classification(output, target):
            return
        num_classes = output.shape[-1]
        low, high = int(target.min()), int(target.max())
        if low < 0 or high >= num_classes:
            raise DataError(f"labels must be in [0, {num_classes}) for a model with {num_classes} outputs, but this "
                            f"batch has labels in [{low}, {high}]. Give the model {high + 1} outputs "
                            f"(e.g. warmstart.finetune.swap_head(model, num_classes={high + 1})) or remap the labels.")

    def evaluate(self, loader: Iterable[Batch]) -> dict[str, float]:
        """Average the validation metrics over ``loader`` (``{"loss": ..., "accuracy": ...}`` for classifiers).

        Under ``torchrun`` each rank evaluates its share and the sums are combined.
        """
        loader = distributed.shard_loader(loader, self.config.seed, train=False)
        return self._evaluate(loader)

    def save_weights(self, path: str | os.PathLike, state_dict: Mapping[str, torch.Tensor] | None = None,
                     extra: Mapping[str, Any] | None = None) -> Path:
        """Write the model's weights (or ``state_dict``) and :meth:`weights_metadata` as ``.safetensors``."""
        weights = self.unwrapped_model.state_dict() if state_dict is None else state_dict
        return save_weights(path, weights, {**self.weights_metadata(), **(extra or {})})

    def save_checkpoint(self, path: str | os.PathLike) -> Path:
        """Write the full training state to ``path`` (what ``fit(resume=path)`` continues from)."""
        return save_checkpoint(path, self._state(batch_in_epoch=0))

    def resolved_config(self) -> dict[str, Any]:
        """The configuration this run uses, as saved in checkpoints and ``config.yaml``."""
        resolved: dict[str, Any] = {"trainer": to_dict(self.config),
                                    "optimizer": {"class": type(self.optimizer).__name__,
                                                  "defaults": _plain(self.optimizer.defaults)}}
        if self.job_config is not None:
            resolved["job"] = self.job_config
        return resolved

    def refresh_trainable(self) -> None:
        """Call after changing ``requires_grad`` during fit, so DDP syncs the new set of parameters."""
        if self._ddp is not None:
            self._wrap_model()

    # ------------------------------------------------------------------ set-up

    def _make_optimizer(self, optimizer: Any) -> torch.optim.Optimizer:
        if isinstance(optimizer, torch.optim.Optimizer):
            return optimizer
        if optimizer is None:
            optimizer = OptimizerConfig()
        elif isinstance(optimizer, Mapping):
            optimizer = from_dict(OptimizerConfig, optimizer, prefix="optimizer")
        if not isinstance(optimizer, OptimizerConfig):
            raise ConfigError(f"optimizer must be a torch.optim.Optimizer, an OptimizerConfig or a dict, got {type(optimizer).__name__}")
        options = {k: v for k, v in to_dict(optimizer).items() if k not in ("name", "lr", "weight_decay")}
        return build_optimizer(self.configure_param_groups(optimizer), optimizer.name, optimizer.lr,
                               optimizer.weight_decay, **options)

    def _check_out_dir(self, out_dir: Path) -> Path:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".write-test-"):
                pass
        except OSError as err:
            raise ConfigError(f"out_dir '{out_dir}' is not writable ({err.strerror}); pass out_dir= a folder you can "
                              f"write, or out_dir=None to write no files") from None
        return out_dir

    def _wrap_model(self) -> None:
        module = self.unwrapped_model
        if distributed.is_distributed():
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self._ddp = nn.parallel.DistributedDataParallel(module, device_ids=device_ids)
            module = self._ddp
        backend = self.config.compile
        if backend is True:
            module = torch.compile(module)
        elif backend:
            module = torch.compile(module, backend=backend)
        self.model = module

    def _setup_fit(self, train_loader: Iterable[Batch], val_loader: Iterable[Batch] | None) -> tuple[Any, Any]:
        cfg = self.config
        distributed.init_distributed(self.device)
        if self.model is self.unwrapped_model or distributed.is_distributed() and self._ddp is None:
            self._wrap_model()
        train_loader = self.prepare_loader(distributed.shard_loader(train_loader, cfg.seed, train=True), "train")
        if val_loader is not None:
            val_loader = self.prepare_loader(distributed.shard_loader(val_loader, cfg.seed, train=False), "val")
        if _length(train_loader) == 0:
            raise DataError("train_loader is empty (len() == 0): the dataset has no samples, or fewer than "
                            "batch_size with drop_last=True")
        self._check_optimizer_covers_model()
        if self.scheduler is None and self._scheduler_spec is not None:
            self.scheduler = self._make_scheduler(train_loader)
        self.progress = ProgressReporter(enabled=cfg.progress and distributed.is_main_process())
        self._targets_checked = False
        self._samples, self._last_log_time = 0, time.perf_counter()
        self._epoch_sums: torch.Tensor | None = None
        self._epoch_rows = 0
        if self.out_dir is not None and distributed.is_main_process():
            save_config(self.resolved_config(), self.out_dir / "config.yaml")
        return train_loader, val_loader

    def _make_scheduler(self, train_loader: Iterable[Batch]) -> Any:
        spec = self._scheduler_spec
        if isinstance(spec, Mapping):
            spec = from_dict(SchedulerConfig, spec, prefix="scheduler")
        if not isinstance(spec, SchedulerConfig):
            raise ConfigError(f"scheduler must be an LR scheduler, a SchedulerConfig or a dict, got {type(spec).__name__}")
        n_batches = _length(train_loader)
        if n_batches is None and self.config.max_steps is None and spec.name in ("cosine", "step"):
            raise ConfigError(f"the '{spec.name}' schedule needs the number of steps: use a loader with len() or set max_steps")
        steps_per_epoch = math.ceil((n_batches or 1) / self.config.accumulate)
        total = self.config.max_steps or steps_per_epoch * self.config.max_epochs
        return build_scheduler(self.optimizer, total_steps=total, steps_per_epoch=steps_per_epoch, **to_dict(spec))

    def _check_optimizer_covers_model(self) -> None:
        in_optimizer = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        missing = [name for name, p in self.unwrapped_model.named_parameters() if p.requires_grad and id(p) not in in_optimizer]
        if missing:
            shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
            raise ConfigError(f"{len(missing)} trainable parameters are not in the optimizer: {shown}. Build the optimizer "
                              "after changing the model (e.g. after swap_head), or freeze them with requires_grad_(False).")

    def _start(self, resume: str | os.PathLike | None) -> int:
        """Load the checkpoint to resume from, or seed a fresh run; return batches already done this epoch."""
        path = None
        if resume is not None and str(resume) == "last":
            candidate = None if self.out_dir is None else self.out_dir / "last.pt"
            if candidate is not None and candidate.exists():
                path = candidate
            elif self.progress.enabled:
                print(f"resume='last': no checkpoint in {self.out_dir}, starting a fresh run", flush=True)
        elif resume is not None:
            path = Path(resume)
        if path is None:
            seed_everything(self.config.seed)
            return 0
        state = load_checkpoint(path, map_location=self.device)
        self._load_state(state, path)
        if state["batch_in_epoch"]:
            self._rng_epoch_start, self._resume_rng = state["rng_epoch_start"], state["rng"]
        else:
            set_rng_state(state["rng"])
        if self.progress.enabled:
            print(f"resumed from {path} at epoch {self.epoch + 1}, step {self.global_step}", flush=True)
        return state["batch_in_epoch"]

    # ------------------------------------------------------------------ logging and metrics

    def _record(self, terms: dict[str, torch.Tensor]) -> None:
        """Keep this micro-batch's detached loss terms until the next log read (no kernel, no sync)."""
        names = tuple(terms)
        if names != self._term_names:
            if self._pending:
                raise ConfigError(f"compute_loss returned terms {list(names)} after {list(self._term_names)}; "
                                  "return the same terms every step")
            self._term_names = names
        self._pending.append(tuple(terms.values()))

    def _read_window(self) -> tuple[dict[str, float], int]:
        """Read the terms kept since the last log (the host sync of the log interval); raise on NaN/inf."""
        rows = len(self._pending)
        if rows == 0:
            return {}, 0
        window = torch.stack([t for row in self._pending for t in row]).float().view(rows, len(self._term_names))
        self._pending = []
        window_sums = window.sum(0)
        totals = torch.cat([window_sums, window.new_tensor([float(rows)])])
        totals = distributed.all_reduce_sum(totals).tolist()  # .tolist() syncs: once per log interval
        count = totals.pop()
        self._epoch_sums = window_sums if self._epoch_sums is None else self._epoch_sums + window_sums
        self._epoch_rows += rows
        means = {name: total / count for name, total in zip(self._term_names, totals)}
        if not all(math.isfinite(v) for v in means.values()):
            self._raise_nonfinite(window)
        return means, rows

    def _raise_nonfinite(self, window: torch.Tensor) -> None:
        finite_rows = torch.isfinite(window).all(dim=1).tolist()
        first = finite_rows.index(False) if False in finite_rows else 0
        step = self._window_first_step + first // self.config.accumulate + 1
        values = dict(zip(self._term_names, window[first].tolist()))
        shown = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
        raise NonFiniteLossError(
            f"non-finite loss at step {step} (epoch {self.epoch + 1}): {shown}. Lower the learning rate, clip "
            "gradients (grad_clip=1.0), prefer precision='bf16' to '16', or pass nonfinite='skip' to skip such steps.")

    def _log_window(self) -> None:
        means, _ = self._read_window()
        now = time.perf_counter()
        rate = self._samples * distributed.world_size() / max(now - self._last_log_time, 1e-9)
        metrics = {**means, "lr": self._current_lr(), "samples_per_s": rate}
        if self.skipped_steps:
            metrics["skipped_steps"] = self.skipped_steps
        self._samples, self._last_log_time, self._window_first_step = 0, now, self.global_step
        self.progress.log(self.epoch, self.global_step, metrics)
        for cb in self.callbacks:
            cb.on_log(self, metrics)

    def _current_lr(self) -> float:
        return max(float(group["lr"]) for group in self.optimizer.param_groups)

    def _end_epoch(self, val_loader: Iterable[Batch] | None, seconds: float) -> None:
        self._read_window()
        metrics: dict[str, float] = {"epoch": self.epoch + 1}
        if self._epoch_sums is not None and self._epoch_rows:
            sums = distributed.all_reduce_sum(self._epoch_sums.clone()).tolist()
            rows = self._epoch_rows * distributed.world_size()
            metrics.update({f"train_{name}": total / rows for name, total in zip(self._term_names, sums)})
        self._epoch_sums, self._epoch_rows = None, 0
        metrics.update(self.on_train_epoch_end(self.epoch))
        if val_loader is not None:
            for cb in self.callbacks:
                cb.on_validation_start(self)
            metrics.update({f"val_{k}": v for k, v in self._evaluate(val_loader).items()})
            for cb in self.callbacks:
                cb.on_validation_end(self)
        metrics["lr"] = self._current_lr()
        metrics["seconds"] = seconds
        if isinstance(self.scheduler, Plateau):
            monitor = getattr(self.scheduler, "monitor", "val_loss")
            if monitor not in metrics:
                raise ConfigError(f"the plateau schedule monitors '{monitor}', not among {', '.join(metrics)}")
            self.scheduler.step(metrics[monitor])
        self.history.append(metrics)
        for cb in self.callbacks:
            cb.on_epoch_end(self, metrics)
        self.progress.end_epoch(self.epoch, {k: v for k, v in metrics.items() if k != "epoch"})
        self.epoch += 1
        if self.out_dir is not None and self.config.checkpoint:
            self._save_checkpoint(batch_in_epoch=0)

    @torch.no_grad()
    def _evaluate(self, loader: Iterable[Batch]) -> dict[str, float]:
        was_training = self.unwrapped_model.training
        self.unwrapped_model.eval()
        # evaluation needs no gradient sync: run the bare module so no DDP collective can hang
        wrapped, self.model = self.model, self.unwrapped_model
        self._targets_checked = False
        totals: dict[str, torch.Tensor] = {}
        try:
            for batch in loader:
                sums = self.validation_step(move_to_device(batch, self.device, self.config.channels_last))
                for name, value in sums.items():
                    totals[name] = totals[name] + value if name in totals else value
        finally:
            self.model = wrapped
            self.unwrapped_model.train(was_training)
            self._targets_checked = False
        if not totals:
            raise DataError("the evaluation loader produced no batches; check that its dataset is not empty")
        names = list(totals)
        values = distributed.all_reduce_sum(torch.stack([totals[n].float() for n in names])).tolist()
        result = dict(zip(names, values))
        count = result.pop("count")
        return {name: value / count for name, value in result.items()}

    # ------------------------------------------------------------------ checkpoints

    def _state(self, batch_in_epoch: int) -> dict[str, Any]:
        return {
            "model": self.unwrapped_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "rng": rng_state(),
            "rng_epoch_start": self._rng_epoch_start if batch_in_epoch else None,
            "epoch": self.epoch,
            "batch_in_epoch": batch_in_epoch,
            "global_step": self.global_step,
            "skipped_steps": self.skipped_steps,
            "history": self.history,
            "callbacks": {key: cb.state_dict() for key, cb in self._callbacks_by_key().items()},
            "trainer": self.extra_state(),
            "config": self.resolved_config(),
            "metadata": _plain(self.weights_metadata()),
        }

    def _save_checkpoint(self, batch_in_epoch: int) -> None:
        if not distributed.is_main_process():
            return
        save_checkpoint(self.out_dir / "last.pt", self._state(batch_in_epoch))
        if batch_in_epoch == 0:
            self.save_weights(self.out_dir / "last.safetensors")

    def _load_state(self, state: dict[str, Any], path: Path) -> None:
        own = self.unwrapped_model.state_dict()
        theirs = state["model"]
        problems = [f"missing {k}" for k in own if k not in theirs] + [f"unexpected {k}" for k in theirs if k not in own]
        problems += [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                     for k, v in theirs.items() if k in own and v.shape != own[k].shape]
        if problems:
            shown = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
            raise CheckpointError(f"checkpoint '{path}' was saved from a different model ({len(problems)} mismatched "
                                  f"keys: {shown}). Resume with the model it was trained with, or load only matching "
                                  "weights with warmstart.finetune.load_pretrained.")
        self.unwrapped_model.load_state_dict(theirs)
        self.load_extra_state(state["trainer"])
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as err:
            raise CheckpointError(f"checkpoint '{path}' has optimizer state that does not fit this optimizer ({err}); "
                                  "resume with the same optimizer and parameter groups") from None
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        for key, cb in self._callbacks_by_key().items():
            if key in state["callbacks"]:
                cb.load_state_dict(state["callbacks"][key])
        self.epoch, self.global_step = state["epoch"], state["global_step"]
        self.skipped_steps, self.history = state["skipped_steps"], list(state["history"])

    def _callbacks_by_key(self) -> dict[str, Callback]:
        """Name callbacks ``ClassName`` or ``ClassName#2`` so checkpoints match them by class, not position."""
        keys: dict[str, Callback] = {}
        for cb in self.callbacks:
            name = type(cb).__name__
            key, n = name, 1
            while key in keys:
                n += 1
                key = f"{name}#{n}"
            keys[key] = cb
        return keys

    def _no_sync(self, enabled: bool) -> contextlib.AbstractContextManager:
        """Skip DDP's gradient all-reduce on micro-batches that do not end an accumulation window."""
        return self._ddp.no_sync() if enabled and self._ddp is not None else contextlib.nullcontext()


def _set_epoch(loader: Any, epoch: int) -> None:
    """Tell a loader, its sampler (DistributedSampler) and its data set (AugmentedViews) which epoch starts."""
    for part in (loader, getattr(loader, "sampler", None), getattr(loader, "dataset", None)):
        if hasattr(part, "set_epoch"):
            part.set_epoch(epoch)


def _length(loader: Any) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None


def _is_scheduler(obj: Any) -> bool:
    return isinstance(obj, (torch.optim.lr_scheduler.LRScheduler, Plateau))


def _loss_terms(out: torch.Tensor | Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Normalise ``compute_loss``'s result to a dict of scalar tensors with ``"loss"`` first."""
    if isinstance(out, torch.Tensor):
        return {"loss": out}
    if not isinstance(out, Mapping) or "loss" not in out:
        raise ConfigError("compute_loss must return a loss tensor or a dict with a 'loss' entry")
    terms = {"loss": out["loss"]}
    terms.update({k: v for k, v in out.items() if k not in ("loss", "output") and isinstance(v, torch.Tensor) and v.dim() == 0})
    return terms


def classification_sums(output: Any, target: Any, terms: Mapping[str, torch.Tensor], device: torch.device,
                        n: int | None = None) -> dict[str, torch.Tensor]:
    """Per-batch sums for evaluation: each term times the batch size, correct predictions as ``accuracy``, ``count``.

    Accuracy is counted when ``output`` is ``(B, C)`` scores and ``target`` is ``(B,)`` class indices.
    """
    n = n if n is not None else len(target)
    sums = {name: value.detach().float() * n for name, value in terms.items()}
    if _is_classification(output, target):
        sums["accuracy"] = (output.argmax(dim=-1) == target).sum().float()
    sums["count"] = torch.tensor(float(n), device=device)
    return sums


def _is_classification(output: Any, target: Any) -> bool:
    return (isinstance(output, torch.Tensor) and isinstance(target, torch.Tensor) and output.dim() == 2
            and output.is_floating_point() and target.dim() == 1 and not target.is_floating_point()
            and output.shape[0] == target.shape[0])


def _tensorboard_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def _plain(obj: Any) -> Any:
    """Keep only what ``torch.load(weights_only=True)`` and JSON can hold."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)
