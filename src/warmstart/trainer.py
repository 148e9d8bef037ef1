"""The shared training loop: one Trainer that the pretrain, finetune and distill trainers subclass."""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from warmstart import distributed
from warmstart._batches import (Batch, check_one_class, check_regression_shapes, classification_sums,
                                is_classification, is_cross_entropy, is_elementwise_loss, loader_length, loss_terms,
                                run_model, set_loader_epoch, split_batch, target_of)
from warmstart._epoch import EpochState, MetricWindow, accumulation_windows
from warmstart._progress import ProgressReporter
from warmstart._resume import ExactResume, position_schedule
from warmstart._run_dir import check_fresh_run_on_every_rank, check_out_dir, run_lock
from warmstart._runtime import (NO_CONTEXT, autocast_context, batch_size_of, check_precision, describe_callable,
                                grad_accumulators, move_to_device, plain_values, select_device)
from warmstart._threads import cpu_threads
from warmstart.callbacks import Callback, CSVLogger, TensorBoardLogger
from warmstart.checkpoint import COMPRESSION_ATTRIBUTE, save_weights
from warmstart.config import OptimizerConfig, SchedulerConfig, TrainerConfig, from_dict, merge_options, save_config, to_dict
from warmstart.errors import ConfigError, DataError, NonFiniteLossError, nearest
from warmstart.evaluation import average_metrics
from warmstart.heads import describe_head
from warmstart.optim import build_optimizer, build_scheduler, param_groups_weight_decay

Plateau = torch.optim.lr_scheduler.ReduceLROnPlateau

__all__ = ["Trainer", "classification_sums", "split_batch"]


class Trainer:
    """Train, validate and checkpoint a model; subclass it to change what a step computes.

    ``fit`` runs epochs of: move the batch to the device, ``training_step`` (forward under autocast,
    loss, backward), and every ``accumulate`` micro-batches one optimizer step. Losses and checks
    (labels in range, ...) stay on the device and are read every ``log_every`` steps; a checkpoint
    is written every epoch.

    Batches are ``(inputs, target, ...)`` tuples, dicts with ``input``/``target`` keys, or dicts of
    tokenized text (``input_ids``, ``attention_mask``, ``labels``: see :func:`warmstart.data.text_loader`),
    which the model gets as keyword arguments; a Hugging Face model's output gives its ``.logits``.

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
    - ``checkpoint_model_state()`` / ``load_checkpoint_model_state(state, metadata)``: the model
      weights a resume checkpoint holds (all of them; a LoRA run keeps only what training changes).
    - ``weights_metadata()``: facts saved beside the weights (``num_classes``, ``head``, config).

    Callbacks (:mod:`warmstart.callbacks`) are for side effects only. ``self.model`` is what to call
    in a forward pass (wrapped by DDP or ``torch.compile`` during fit); ``self.unwrapped_model``
    is the user's module.

    Under ``torchrun`` each process holds a full replica (DDP), or, with ``strategy="fsdp"``, a
    shard of every parameter, gradient and optimizer state (:class:`warmstart.distributed.FSDPStrategy`): the model is
    sharded in place when the Trainer is built (block by block), checkpoints are sharded folders
    (``last.dcp``) that resume at any number of processes, and ``last.safetensors`` is gathered.

    Resuming (``fit(..., resume="last")``) continues the checkpoint's run exactly; settings that
    differ from the checkpoint's are applied and listed in a warning (a longer ``max_epochs``
    re-plans a schedule given by name), and what cannot be honoured is refused (see
    :mod:`warmstart._resume`). While a run with an ``out_dir`` trains, it holds a lock file there:
    a second run in the same folder is refused.

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
            ``nonfinite``, ``compile``, ``channels_last``, ``save_every``, ``max_steps``, ``checkpoint``,
            ``strategy`` (``"auto"``, ``"ddp"``, ``"fsdp"``), ``fsdp`` (:class:`warmstart.config.FSDPConfig`
            options), ``activation_checkpointing``.

    Raises:
        ConfigError: an unknown option, a model without trainable parameters, an int8 model (from
            ``warmstart.compress.quantize``: train the float model or its ``prepare_qat`` copy), an
            unwritable ``out_dir``, ...

    Examples:
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
        self.out_dir = None if cfg.out_dir is None else check_out_dir(cfg.out_dir)
        # an int8 model's weights take no gradients: only its biases would train (warmstart.compress marks the mode)
        int8_mode = (getattr(model, COMPRESSION_ATTRIBUTE, None) or {}).get("quantized", {}).get("mode")
        if int8_mode is not None:
            raise ConfigError(f"cannot train an int8 model ({type(model).__name__} quantized '{int8_mode}'): its int8 "
                              "weights take no gradients, so only its biases would learn. Fine-tune the float model "
                              "and quantize it afterwards, or train with quantization in the loop: qat = "
                              "warmstart.compress.prepare_qat(float_model, example_input), train qat (Trainer or "
                              "recover), then warmstart.compress.convert_qat(qat)")
        if not any(p.requires_grad for p in model.parameters()):
            raise ConfigError(f"{type(model).__name__} has no trainable parameters (all have requires_grad=False); "
                              "unfreeze some (warmstart.finetune.unfreeze), or measure it with warmstart.evaluate("
                              "model, loader), which needs no optimizer")

        self.unwrapped_model = model.to(self.device)
        if cfg.channels_last:
            self.unwrapped_model.to(memory_format=torch.channels_last)
        self._head = describe_head(model)  # before sharding: finding the head may trace the model's forward
        if distributed.launched_by_torchrun():  # before FSDP's first collective: other settings would hang in it
            distributed.init_distributed(self.device)
            distributed.check_ranks_agree({**self._shared_settings(), **_model_facts(model),
                                           "optimizer": describe_optimizer(optimizer), "loss_fn": describe_callable(
                                               loss_fn if loss_fn is not None else F.cross_entropy)},
                                          "when the Trainer is built")
        self.strategy = distributed.build_strategy(cfg.strategy, self.device)
        # FSDP shards the model in place here, before the optimizer is built on its (sharded) parameters
        self.strategy.prepare(self.unwrapped_model, cfg, self.precision, optimizer)
        self.model: nn.Module = self.unwrapped_model  # DDP / compiled wrapper once fit starts
        self.loss_fn = loss_fn if loss_fn is not None else F.cross_entropy
        self._elementwise_loss = is_elementwise_loss(self.loss_fn)  # outputs and targets must then have one shape
        self._cross_entropy = is_cross_entropy(self.loss_fn)  # a single output would then train at loss 0
        self.optimizer = self._make_optimizer(optimizer)
        self._scheduler_spec = scheduler
        self.scheduler: Any = scheduler if _is_scheduler(scheduler) else None
        self._schedule: dict[str, Any] | None = None  # the by-name schedule as built: its settings and length
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "16" else None

        self.callbacks = list(callbacks)
        if self.out_dir is not None:
            self.callbacks.insert(0, CSVLogger())
            if _tensorboard_installed() and not any(isinstance(c, TensorBoardLogger) for c in self.callbacks):
                self.callbacks.insert(1, TensorBoardLogger())
        self.job_config: dict[str, Any] | None = None  # the whole run's config, when the CLI built this trainer
        self.seed = cfg.seed
        self.epoch = self.global_step = self.skipped_steps = 0
        self.history: list[dict[str, float]] = []
        self.should_stop = False
        self.stepped = False  # whether the last optimizer step was taken (not skipped for NaN/inf or by the GradScaler)
        self.validated_state: dict[str, torch.Tensor] | None = None  # weights the last validation measured, if not the live ones
        self.progress = ProgressReporter(enabled=False)
        self.metrics = MetricWindow(self.device)
        self.checks = self.metrics.checks  # subclasses add their own device-side checks here
        self.epoch_state = EpochState()
        self.resumer = ExactResume(self)
        self._loss_scale = 1.0
        self._skip_window = False  # nonfinite="skip": a micro-batch of this window had a NaN/inf loss
        self._grad_accumulators: list[Any] = []  # held during fit, so that autograd builds them once
        # the optimizer-step hooks run only when a subclass overrides them
        self._edits_gradients = type(self).on_before_optimizer_step is not Trainer.on_before_optimizer_step
        self._edits_weights = type(self).on_after_optimizer_step is not Trainer.on_after_optimizer_step

    # ------------------------------------------------------------------ the loop

    def fit(self, train_loader: Iterable[Batch], val_loader: Iterable[Batch] | None = None, *,
            resume: str | os.PathLike | None = None) -> list[dict[str, float]]:
        """Train until ``max_epochs`` or ``max_steps``, validating and checkpointing after each epoch.

        Args:
            train_loader: any iterable of batches (a ``DataLoader``, a list, ...).
            val_loader: evaluated after every epoch (metrics prefixed ``val_``).
            resume: ``"last"`` continues the newest checkpoint in ``out_dir`` (``last.pt`` or
                ``last.dcp``) when there is one, or a checkpoint path.

        Returns:
            The history: one dict of metrics per epoch (``train_loss``, ``val_loss``, ``val_accuracy``, ``lr``, ...);
            a run stopped inside an epoch (``max_steps``) ends with a row for that part of it.

        Raises:
            DataError: empty loader or labels outside the model's outputs.
            NonFiniteLossError: a NaN/inf loss (unless ``nonfinite="skip"``), or every step of an epoch skipped.
            CheckpointError: ``resume`` names an unreadable checkpoint, one of another model, or a
                change of settings that cannot be honoured.
            RunExistsError: a fresh run into an ``out_dir`` that holds an earlier run (``overwrite=False``).
            OutDirBusyError: another live run holds ``out_dir``.
        """
        cfg = self.config
        distributed.init_distributed(self.device)
        with run_lock(self.out_dir, self.device), cpu_threads(cfg.threads, self.device) as self.threads_used:
            self.resumer = ExactResume(self)
            resumed = self.resumer.read(resume)
            if not resumed and self.global_step == 0 and self.out_dir is not None:
                check_fresh_run_on_every_rank(self.out_dir, cfg.overwrite, self.device)  # never replace a run unasked
            self.seed = self.resumer.seed()
            if not resumed and self._finished():
                warnings.warn(f"this Trainer has already trained {self.epoch} epoch(s) ({self.global_step} steps), "
                              f"which reaches max_epochs={cfg.max_epochs}, max_steps={cfg.max_steps}: this fit trains "
                              "nothing and returns the earlier history. Raise trainer.config.max_epochs (or "
                              "max_steps) to train further, or build a new Trainer", stacklevel=2)
            train_loader, val_loader = self._setup_fit(train_loader, val_loader)
            self.resumer.start()
            for cb in self.callbacks:
                cb.on_fit_start(self)
            step_callbacks = [cb for cb in self.callbacks if type(cb).on_train_step_end is not Callback.on_train_step_end]

            try:
                while self.epoch < (cfg.epochs or math.inf) and not self.should_stop:
                    finished = self._train_epoch(train_loader, step_callbacks)
                    self._end_epoch(val_loader, finished)  # also when max_steps stopped it: a row, validation, weights
                    if not finished:
                        break
            finally:  # also when fit fails: a model changed afterwards is not kept alive by them
                self._grad_accumulators = []
            self.progress.close()
            for cb in self.callbacks:
                cb.on_fit_end(self)
        return self.history

    def _finished(self) -> bool:
        """True when ``max_epochs`` or ``max_steps`` is already reached: a fit would train nothing."""
        cfg = self.config
        return self.epoch >= (cfg.epochs or math.inf) or self.global_step >= (cfg.max_steps or math.inf)

    def _train_epoch(self, loader: Iterable[Batch], step_callbacks: Sequence[Callback]) -> bool:
        """Train one epoch (or the rest of one, after a mid-epoch resume); False when it stopped inside the epoch."""
        cfg, state = self.config, self.epoch_state
        set_loader_epoch(loader, self.epoch)
        self.model.train()
        self.on_train_epoch_start(self.epoch)
        for cb in self.callbacks:
            cb.on_train_epoch_start(self)
        self._epoch_started = time.perf_counter()
        n_batches = loader_length(loader)
        self.progress.start_epoch(self.epoch, cfg.epochs, None if n_batches is None else math.ceil(n_batches / cfg.accumulate),
                                  initial=state.batches // cfg.accumulate)
        batches = self.resumer.epoch_batches(loader)  # after a mid-epoch resume: the same order, done batches skipped

        for batch, ends_window, window in accumulation_windows(batches, cfg.accumulate, n_batches, state.batches):
            batch = move_to_device(batch, self.device, cfg.channels_last)
            self._loss_scale = 1.0 / window  # a short last window is the mean over its own micro-batches
            # every strategy's no_sync is a no-op on the micro-batch that ends a window
            with NO_CONTEXT if ends_window else self.strategy.no_sync(self.unwrapped_model, enabled=True):
                try:
                    terms = self.training_step(batch)
                except (IndexError, RuntimeError) as err:  # on the CPU a label out of range fails the loss itself
                    # (one process: under torchrun labels are clamped and the ranks read the checks together)
                    failure = None if distributed.is_distributed() else self.metrics.failure()
                    if failure is None:
                        raise
                    raise failure from err
            if terms is not None:
                state.record(terms)
            samples = batch_size_of(batch)
            state.batches, state.samples, self._samples = state.batches + 1, state.samples + samples, self._samples + samples
            if self.global_step == 0 and state.batches == 1:
                self.metrics.verify()  # the first batch is checked at once (one sync), so typical mistakes fail at step 1
            if ends_window:
                self._step(step_callbacks)
                if cfg.max_steps is not None and self.global_step >= cfg.max_steps:
                    self.should_stop = True
                if self.should_stop:  # max_steps, or a callback asked to stop within the epoch
                    return n_batches is not None and state.batches == n_batches
        if state.batches == 0:
            raise DataError("the training loader produced no batches this epoch; check the dataset is not empty "
                            "and that batch_size is not larger than it with drop_last=True")
        return True

    def _step(self, step_callbacks: Sequence[Callback]) -> None:
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
            self._save_checkpoint()

    def _optimizer_step(self) -> None:
        if self._skip_window:  # nonfinite="skip": a micro-batch of this window had a NaN/inf loss
            self._skip_window, self.stepped = False, False
            self.skipped_steps += 1
            self.epoch_state.skipped += 1
            self.optimizer.zero_grad(set_to_none=True)
            return
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self._edits_gradients:
            self.on_before_optimizer_step()
        if self.config.grad_clip is not None:
            params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
            self.strategy.clip_grad_norm(params, self.config.grad_clip)
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
        self.stepped = stepped  # callbacks that follow the weights (EMA) skip a step that was not taken
        if stepped:
            self.epoch_state.steps += 1
            if self._edits_weights:
                self.on_after_optimizer_step()
            if self.scheduler is not None and not isinstance(self.scheduler, Plateau):
                self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _end_epoch(self, val_loader: Iterable[Batch] | None, finished: bool = True) -> None:
        """Close an epoch (or, ``finished=False``, the part of one that ``max_steps`` let run): history row,
        validation, callbacks, checkpoint.

        Every rank's BatchNorm statistics are averaged first, so the validation and the saved weights are one model.
        """
        state = self.epoch_state
        self.metrics.read(state)
        if finished and state.skipped and not state.steps:
            raise NonFiniteLossError(f"every one of the {state.skipped} steps of epoch {self.epoch + 1} had a NaN/inf "
                                     "loss and was skipped (nonfinite='skip'): nothing was trained. Lower the learning "
                                     "rate, clip gradients, or check the data for NaN/inf.")
        self.strategy.sync_buffers(self.unwrapped_model)
        metrics: dict[str, float] = {"epoch": self.epoch + 1}
        if not finished:
            metrics["step"] = self.global_step  # a partial epoch: where max_steps stopped it
        if state.sums is not None and state.rows:
            sums = distributed.all_reduce_sum(state.sums.clone()).tolist()
            rows = state.rows * distributed.world_size()
            metrics.update({f"train_{name}": total / rows for name, total in zip(state.term_names, sums)})
        metrics.update(self.on_train_epoch_end(self.epoch))
        if val_loader is not None:
            self.validated_state = None
            for cb in self.callbacks:
                cb.on_validation_start(self)
            metrics.update({f"val_{k}": v for k, v in self._evaluate(val_loader).items()})
            for cb in self.callbacks:
                cb.on_validation_end(self)
        metrics["lr"] = self.current_lr()
        metrics["seconds"] = time.perf_counter() - self._epoch_started
        if isinstance(self.scheduler, Plateau) and finished:
            monitor = getattr(self.scheduler, "monitor", "val_loss")
            if monitor not in metrics:
                raise ConfigError(f"the plateau schedule monitors '{monitor}', not among {', '.join(metrics)}")
            self.scheduler.step(metrics[monitor])
        if finished and self.history and self.history[-1]["epoch"] == metrics["epoch"] and "step" in self.history[-1]:
            self.history.pop()  # resumed after max_steps stopped inside this epoch: the whole epoch's row replaces it
        self.history.append(metrics)
        if finished:  # a part of an epoch is no epoch to a callback: resumed, the whole epoch ends once
            for cb in self.callbacks:
                cb.on_epoch_end(self, metrics)
        self.progress.end_epoch(self.epoch, {k: v for k, v in metrics.items() if k != "epoch"})
        if finished:
            self.epoch += 1
            self.epoch_state = EpochState(self.global_step, self.epoch, self.config.accumulate)
        self._save_checkpoint(weights=True)

    def _evaluate(self, loader: Iterable[Batch]) -> dict[str, float]:
        # evaluation needs no gradient sync: run the bare module so no DDP collective can hang
        wrapped, self.model = self.model, self.unwrapped_model
        try:
            return average_metrics(self.unwrapped_model, loader, self.validation_step, self.strategy,
                                   verify=self.metrics.verify, channels_last=self.config.channels_last)
        finally:
            self.model = wrapped

    def _log_window(self) -> None:
        means = self.metrics.read(self.epoch_state)
        now = time.perf_counter()
        rate = self._samples * distributed.world_size() / max(now - self._last_log_time, 1e-9)
        metrics = {**means, "lr": self.current_lr(), "samples_per_s": rate}
        if self.skipped_steps:
            metrics["skipped_steps"] = self.skipped_steps
        self._samples, self._last_log_time = 0, now
        self.epoch_state.window_first_step = self.global_step
        self.progress.log(self.epoch, self.global_step, metrics)
        for cb in self.callbacks:
            cb.on_log(self, metrics)

    # ------------------------------------------------------------------ checkpoints

    def _state(self, rank_states: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "model": self.checkpoint_model_state(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "rng": rank_states,
            "epoch_state": self.epoch_state.state_dict(),
            "epoch": self.epoch,
            "global_step": self.global_step,
            "skipped_steps": self.skipped_steps,
            "history": self.history,
            "callbacks": {key: cb.state_dict() for key, cb in self.callbacks_by_key().items()},
            "trainer": self.extra_state(),
            "config": self.resolved_config(),
            "metadata": plain_values(self.weights_metadata()),
        }

    def _save_checkpoint(self, weights: bool = False) -> None:
        """Write the resume checkpoint (and with ``weights``, ``last.safetensors``) once the device checks have passed."""
        if self.out_dir is None or not self.config.checkpoint:
            return
        self.metrics.verify()  # never checkpoint weights trained on a batch that failed a check
        self.save_checkpoint(self.out_dir / self.strategy.checkpoint_name)
        if weights:
            self.save_weights(self.out_dir / "last.safetensors")

    # ------------------------------------------------------------------ overridable methods

    def compute_loss(self, batch: Batch) -> torch.Tensor | dict[str, torch.Tensor]:
        """Forward pass and loss: ``loss_fn(model(inputs), target)``.

        A text batch (a dict with ``input_ids``, ``attention_mask`` and ``labels``) is passed as
        ``model(input_ids=..., attention_mask=...)``; a Hugging Face output gives its ``.logits``.

        Returns:
            ``{"loss": scalar, "output": model output}``; overrides may add scalar terms to log.
        """
        inputs, target = split_batch(batch)
        output = run_model(self.model, inputs)
        target = self.check_targets(output, target)
        return {"loss": self.loss_fn(output, target), "output": output}

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor] | None:
        """Run ``compute_loss`` under autocast and backpropagate; return the detached loss terms.

        Returns ``None`` for a micro-batch that ``nonfinite="skip"`` skipped.
        """
        with self.autocast():
            out = self.compute_loss(batch)
        terms = loss_terms(out)
        if not self.backward(terms["loss"]):
            return None
        return {name: value.detach() for name, value in terms.items()}

    def validation_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Return per-batch sums: each loss term times the batch size, ``accuracy`` as correct counts, ``count``.

        Accuracy is counted when the output is ``(B, C)`` scores and the target ``(B,)`` class indices.
        """
        with self.autocast():
            out = self.compute_loss(batch)
        output = out.get("output") if isinstance(out, Mapping) else None
        return classification_sums(output, target_of(batch), loss_terms(out), self.device, batch_size_of(batch))

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

    def checkpoint_model_state(self) -> dict[str, torch.Tensor]:
        """The model weights a resume checkpoint (``last.pt``) holds: the whole state dict."""
        return self.unwrapped_model.state_dict()

    def load_checkpoint_model_state(self, state: dict[str, torch.Tensor], metadata: Mapping[str, Any]) -> None:
        """Restore :meth:`checkpoint_model_state` (``metadata``: the checkpoint's :meth:`weights_metadata`)."""
        self.unwrapped_model.load_state_dict(state)

    def weights_metadata(self) -> dict[str, Any]:
        """Facts saved beside the weights: model class, head module and class count, epoch, config."""
        return {"model_class": type(self.unwrapped_model).__name__, **self._head,
                "epoch": self.epoch, "global_step": self.global_step, "config": self.resolved_config()}

    # ------------------------------------------------------------------ helpers subclasses use

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context of this trainer's precision (a no-op for ``"32"``)."""
        return NO_CONTEXT if self.precision == "32" else autocast_context(self.precision, self.device)

    def backward(self, loss: torch.Tensor) -> bool:
        """Backpropagate ``loss`` scaled for accumulation (and by the GradScaler under fp16).

        With ``nonfinite="skip"`` a NaN/inf loss is not backpropagated and the whole optimizer
        step of its accumulation window is skipped (counted in ``skipped_steps``); this reads the
        loss on the host every micro-batch (and agrees across ranks).

        Returns:
            False when the micro-batch was skipped.
        """
        if self.config.nonfinite == "skip":
            bad = distributed.all_reduce_sum((~torch.isfinite(loss.detach())).float())
            if bad.item() > 0:  # host sync, only in skip mode
                self._skip_window = True
                return False
        if self._loss_scale != 1.0:
            loss = loss * self._loss_scale
        if self.scaler is not None:
            loss = self.scaler.scale(loss)
        loss.backward()
        return True

    def check_targets(self, output: Any, target: Any) -> Any:
        """Check class-index targets against the model's outputs, on the device; return them safe to index with.

        The targets are kept (no kernel, no host sync per step) and checked together at the next read
        of the log window or before a checkpoint: labels outside ``[0, C)`` then raise a
        :class:`DataError`. On a GPU the returned targets are clamped into range until then, so a
        kernel never asserts on them; on the CPU a loss that indexes with an out-of-range label
        fails at once, and that failure is reported as the same :class:`DataError`.
        Other outputs and targets are returned unchanged; for an element-wise loss (``mse_loss``,
        ``l1_loss``, ...) outputs and targets of different shapes, which it would broadcast, are a
        :class:`DataError`.
        """
        if not is_classification(output, target):
            if self._elementwise_loss:
                check_regression_shapes(output, target)
            elif self._cross_entropy:
                check_one_class(output)
            return target
        return self.metrics.check_labels(output, target)

    def evaluate(self, loader: Iterable[Batch]) -> dict[str, float]:
        """Average the validation metrics over ``loader`` (``{"loss": ..., "accuracy": ...}`` for classifiers).

        This is :func:`warmstart.evaluate` with this trainer's ``validation_step``. Under ``torchrun``
        each rank evaluates its share (every sample once) and the sums are combined.

        Raises:
            DataError: an empty loader or labels out of range.
            NonFiniteLossError: the model's outputs or loss hold NaN/inf (the metrics would mean nothing).
        """
        loader = distributed.shard_loader(loader, self.seed or 0, train=False)
        with cpu_threads(self.config.threads, self.device):
            return self._evaluate(loader)

    def save_weights(self, path: str | os.PathLike, state_dict: Mapping[str, torch.Tensor] | None = None,
                     extra: Mapping[str, Any] | None = None) -> Path:
        """Write the model's weights (or ``state_dict``) and :meth:`weights_metadata` as ``.safetensors``.

        Only rank 0 writes, and every rank must call it: under ``strategy="fsdp"`` the shards (of
        the model, or the ``DTensor`` s of ``state_dict``) are gathered into one file.
        """
        weights = self.strategy.full_state_dict(self.unwrapped_model, state_dict)
        if not distributed.is_main_process():
            return Path(path)
        return save_weights(path, weights, {**self.weights_metadata(), **(extra or {})})

    def save_checkpoint(self, path: str | os.PathLike) -> Path:
        """Write the full training state to ``path`` (what ``fit(resume=path)`` continues from); every rank must call it.

        The strategy chooses the kind: one file written by rank 0, or (``strategy="fsdp"``) a folder
        that every rank writes its shards into (:mod:`torch.distributed.checkpoint`).
        """
        self.strategy.reshard(self.unwrapped_model)  # the state dict must hold what the optimizer holds
        state = self._state(self.resumer.rank_states(self.unwrapped_model))
        if not self.strategy.writes_checkpoint():
            return Path(path)
        return self.strategy.save_checkpoint(self.unwrapped_model, Path(path), state)

    def resolved_config(self) -> dict[str, Any]:
        """The configuration this run uses, as saved in checkpoints and ``config.yaml``."""
        trainer = {**to_dict(self.config), "seed": self.seed}
        if self.device.type == "cpu" and getattr(self, "threads_used", None) is not None:
            trainer["threads_used"] = self.threads_used  # float sums depend on it ("auto" chooses it)
        resolved: dict[str, Any] = {"trainer": trainer,
                                    "optimizer": {"class": type(self.optimizer).__name__,
                                                  "defaults": plain_values(self.optimizer.defaults)},
                                    "scheduler": self.schedule_description(),
                                    "loss_fn": describe_callable(self.loss_fn)}
        if self.job_config is not None:
            resolved["job"] = self.job_config
        return resolved

    def schedule_description(self) -> dict[str, Any] | None:
        """The learning-rate schedule: its settings and length when built by name, else its class."""
        if self.scheduler is None:
            return None
        return self._schedule if self._schedule is not None else {"class": type(self.scheduler).__name__}

    def current_lr(self) -> float:
        """The largest learning rate among the optimizer's groups."""
        return max(float(group["lr"]) for group in self.optimizer.param_groups)

    def refresh_trainable(self) -> None:
        """Call after changing ``requires_grad`` during fit, so DDP syncs the new set of parameters (and the new ones
        train as fast as the rest)."""
        if self.model is not self.unwrapped_model:
            self.model = self._compiled(self.strategy.rewrap(self.unwrapped_model, self.model))
        self._hold_grad_accumulators()

    def callbacks_by_key(self) -> dict[str, Callback]:
        """Callbacks named ``ClassName`` or ``ClassName#2``, so checkpoints match them by class, not position."""
        keys: dict[str, Callback] = {}
        for cb in self.callbacks:
            name = type(cb).__name__
            key, n = name, 1
            while key in keys:
                n += 1
                key = f"{name}#{n}"
            keys[key] = cb
        return keys

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

    def _hold_grad_accumulators(self) -> None:
        """Hold the gradient accumulators of every parameter the optimizer trains, so autograd builds them once."""
        self._grad_accumulators = grad_accumulators(p for group in self.optimizer.param_groups for p in group["params"])

    def _compiled(self, module: nn.Module) -> nn.Module:
        backend = self.config.compile
        if backend is True:
            return torch.compile(module)
        return torch.compile(module, backend=backend) if backend else module

    def _setup_fit(self, train_loader: Iterable[Batch], val_loader: Iterable[Batch] | None) -> tuple[Any, Any]:
        cfg = self.config
        if distributed.is_distributed():  # before DDP's first collective; settings may have changed since __init__
            with warnings.catch_warnings():  # sharded again below, where any warning about it is given once
                warnings.simplefilter("ignore")
                batches = loader_length(distributed.shard_loader(train_loader, self.seed, train=True))
            distributed.check_ranks_agree({**self._shared_settings(), "batches per epoch": batches,
                                           "optimizer groups": [len(g["params"]) for g in self.optimizer.param_groups],
                                           "learning rates": [g["lr"] for g in self.optimizer.param_groups]},
                                          "when fit starts")
        if self.model is self.unwrapped_model:
            self.model = self._compiled(self.strategy.wrap(self.unwrapped_model))
        train_loader = self.prepare_loader(distributed.shard_loader(train_loader, self.seed, train=True), "train")
        if val_loader is not None:
            val_loader = self.prepare_loader(distributed.shard_loader(val_loader, self.seed, train=False), "val")
        if loader_length(train_loader) == 0:
            raise DataError("train_loader is empty (len() == 0): the dataset has no samples, or fewer than "
                            "batch_size with drop_last=True")
        self._check_optimizer_covers_model()
        self._hold_grad_accumulators()
        for group in self.optimizer.param_groups:  # the configured rate, kept beside the scheduled one
            group.setdefault("initial_lr", group["lr"])
        if self._scheduler_spec is not None and not _is_scheduler(self._scheduler_spec):
            self.scheduler = self._make_scheduler(train_loader)  # planned anew each fit, over the steps it will run
        self.progress = ProgressReporter(enabled=cfg.progress and distributed.is_main_process())
        self.metrics.clamp_on_cpu = distributed.is_distributed()  # every rank must reach the read of the label check
        self.should_stop = False
        self._samples, self._last_log_time = 0, time.perf_counter()
        if self.out_dir is not None and distributed.is_main_process():
            save_config(self.resolved_config(), self.out_dir / "config.yaml")
        return train_loader, val_loader

    def _shared_settings(self) -> dict[str, Any]:
        """The options every rank must share (not the device and CPU threads, which are each rank's own, nor the
        progress display)."""
        return {f"trainer.{key}": value for key, value in to_dict(self.config).items()
                if key not in ("device", "progress", "threads")}

    def _make_scheduler(self, train_loader: Iterable[Batch]) -> Any:
        """The by-name schedule over the optimizer steps this fit will run, positioned at the step reached."""
        spec, cfg = self._scheduler_spec, self.config
        if isinstance(spec, Mapping):
            spec = from_dict(SchedulerConfig, spec, prefix="scheduler")
        if not isinstance(spec, SchedulerConfig):
            raise ConfigError(f"scheduler must be an LR scheduler, a SchedulerConfig or a dict, got {type(spec).__name__}")
        n_batches = loader_length(train_loader)
        if n_batches is None and cfg.max_steps is None and spec.name in ("cosine", "step"):
            raise ConfigError(f"the '{spec.name}' schedule needs the number of steps: use a loader with len() or set max_steps")
        steps_per_epoch = math.ceil((n_batches or 1) / cfg.accumulate)
        by_epochs = math.inf if cfg.epochs is None or n_batches is None else steps_per_epoch * cfg.epochs
        total = int(min(cfg.max_steps or math.inf, by_epochs))  # whichever limit stops training first
        self._schedule = {**to_dict(spec), "total_steps": total, "steps_per_epoch": steps_per_epoch}
        bases = [group["initial_lr"] for group in self.optimizer.param_groups]
        for group, base in zip(self.optimizer.param_groups, bases):
            group["lr"] = base  # a schedule built afresh starts from the configured rates
        scheduler = build_scheduler(self.optimizer, total_steps=total, steps_per_epoch=steps_per_epoch, **to_dict(spec))
        if self.global_step and isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
            position_schedule(scheduler, self.optimizer, bases, self.global_step)  # a later fit continues the plan
        return scheduler

    def _check_optimizer_covers_model(self) -> None:
        self.strategy.reshard(self.unwrapped_model)  # a forward before fit (a feature cache) leaves FSDP's gathered
        in_optimizer = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        missing = [name for name, p in self.unwrapped_model.named_parameters() if p.requires_grad and id(p) not in in_optimizer]
        if missing:
            shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
            raise ConfigError(f"{len(missing)} trainable parameters are not in the optimizer: {shown}. Build the optimizer "
                              "after changing the model (e.g. after swap_head), or freeze them with requires_grad_(False).")


def _model_facts(model: nn.Module) -> dict[str, Any]:
    """The model as ranks must agree on it: each parameter's name, shape and whether it trains."""
    return {"model parameters": [(name, list(p.shape), p.requires_grad) for name, p in model.named_parameters()]}


def describe_optimizer(optimizer: Any) -> Any:
    """An optimizer as ranks compare it: its class and settings, or the config that names one."""
    if isinstance(optimizer, torch.optim.Optimizer):
        return [type(optimizer).__name__, plain_values(optimizer.defaults)]
    if isinstance(optimizer, OptimizerConfig):
        return to_dict(optimizer)
    return plain_values(optimizer)


def _is_scheduler(obj: Any) -> bool:
    return isinstance(obj, (torch.optim.lr_scheduler.LRScheduler, Plateau))


def _tensorboard_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None
