"""Exact resume in one place: choose and read the checkpoint, restore the trainer, replay the RNG and the done batches.

:class:`ExactResume` is what the Trainer calls: at fit start (:meth:`ExactResume.read`, then
:meth:`ExactResume.start`) and at every epoch's start (:meth:`ExactResume.epoch_batches`). A resumed
run continues as the uninterrupted run would have: parameters, buffers, optimizer moments, every
rank's RNG streams, the data order of the epoch in progress and its loss sums.

The policy, as users of a training library expect it (and as the README states it):

- The model, optimizer state (moments), RNG streams, counters and callbacks come from the checkpoint.
- Settings come from the new trainer and are applied, each change stated: a longer ``max_epochs``
  or ``max_steps`` continues training, and a schedule given by name is re-planned over the new
  horizon and positioned at the step reached; a new learning rate, weight decay, momentum or betas
  is used from the next step; a new schedule (or none) replaces the old one from the step reached.
- What cannot be honoured is refused with a :class:`CheckpointError`: another model or optimizer
  class, a scheduler *object* that differs from the checkpoint's (it cannot be re-planned: pass
  the schedule by name), or a new ``accumulate`` when the checkpoint was written mid-epoch.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from warmstart import distributed
from warmstart._epoch import EpochState
from warmstart._runtime import batch_size_of, rng_state, seed_everything, set_rng_state
from warmstart.errors import CheckpointError

LambdaLR = torch.optim.lr_scheduler.LambdaLR
Plateau = torch.optim.lr_scheduler.ReduceLROnPlateau
# scheduler entries that say where it is, not what it is
_SCHEDULER_COUNTERS = ("last_epoch", "_step_count", "_last_lr", "_get_lr_called_within_step", "verbose")


class ResumeChangeWarning(UserWarning):
    """A resumed run's settings differ from the checkpoint's: the warning lists each change and what was done."""


class ExactResume:
    """The resume side of one fit: which checkpoint, restoring from it, and the RNG and batches of each epoch.

    Args:
        trainer: the :class:`warmstart.Trainer` being fit (its state is restored in place).
    """

    def __init__(self, trainer: Any):
        self.trainer = trainer
        self.checkpoint: dict[str, Any] | None = None
        self.path: Path | None = None
        self.generators: list[torch.Generator] = []  # the loader's own shuffling generators, this epoch
        self._rng_now: dict[str, Any] | None = None  # the streams to continue with once the epoch's order is drawn

    def read(self, resume: str | os.PathLike | None) -> bool:
        """Choose and read the checkpoint ``resume`` names (``"last"``: the newest in ``out_dir``); True if one was.

        Raises:
            CheckpointError: an unreadable or incomplete checkpoint, ``resume="last"`` without an
                ``out_dir``, or a checkpoint kind this strategy cannot resume.
        """
        trainer = self.trainer
        if resume is None:
            return False
        if str(resume) == "last":
            if trainer.out_dir is None:
                raise CheckpointError("resume='last' continues the checkpoint in out_dir, but this trainer has "
                                      "out_dir=None: pass the out_dir of the run to continue, or resume=PATH")
            self.path = distributed.find_last_checkpoint(trainer.out_dir)
            if self.path is None:
                if trainer.config.progress and distributed.is_main_process():
                    print(f"resume='last': no checkpoint in {trainer.out_dir}, starting a fresh run", flush=True)
                return False
        else:
            self.path = Path(resume)
        self.checkpoint = trainer.strategy.load_checkpoint(trainer.unwrapped_model, self.path)
        if self.checkpoint.get("epoch_state") is None:
            raise CheckpointError(f"'{self.path}' was written by an older warmstart without the epoch state; resume "
                                  "is not exact: load its weights with warmstart.finetune.load_pretrained instead")
        return True

    def seed(self) -> int:
        """The run's seed: the trainer's, else the checkpoint's, else a kept or newly drawn one (the same on every rank)."""
        trainer = self.trainer
        if trainer.config.seed is not None:
            return trainer.config.seed
        if self.checkpoint is not None:
            return int(self.checkpoint["config"]["trainer"].get("seed") or 0)
        if trainer.seed is not None:  # a later fit of the same trainer keeps its seed
            return trainer.seed
        drawn = torch.randint(0, 2**31 - 1, ())  # from the caller's RNG state: torch.manual_seed decides the run
        return int(distributed.broadcast_from_main(drawn.to(trainer.device)).item())

    def start(self) -> None:
        """Seed a fresh run (each rank its own streams), or restore the trainer from the checkpoint read."""
        trainer, cfg = self.trainer, self.trainer.config
        if self.checkpoint is None:
            seed_everything(distributed.rank_seed(trainer.seed, distributed.rank()))
            trainer.epoch_state = EpochState(trainer.global_step, trainer.epoch, cfg.accumulate)
            return
        state, path = self.checkpoint, self.path
        restore(trainer, state, path)
        self._rng_now, epoch_start, buffers, epoch_state = self._this_rank_state(state)
        trainer.epoch_state = EpochState.from_state_dict(epoch_state or state["epoch_state"], trainer.device,
                                                         trainer.epoch, cfg.accumulate)
        trainer.epoch_state.rng_at_start = epoch_start
        if buffers:  # this rank's own statistics, as the uninterrupted run has them
            own = dict(trainer.unwrapped_model.named_buffers())
            with torch.no_grad():
                for name, value in buffers.items():
                    own[name].copy_(value)
        set_rng_state(self._rng_now)  # the loader's own generators follow when its epoch starts
        if trainer.epoch >= (cfg.epochs or math.inf) or (cfg.max_steps or math.inf) <= trainer.global_step:
            warnings.warn(f"'{path}' has already trained {trainer.epoch} epochs ({trainer.global_step} steps), which "
                          f"reaches max_epochs={cfg.max_epochs}, max_steps={cfg.max_steps}: nothing to train. Raise "
                          "max_epochs (or max_steps) to train further.", stacklevel=4)
        elif cfg.progress and distributed.is_main_process():
            print(f"resumed from {path} at epoch {trainer.epoch + 1}, step {trainer.global_step}", flush=True)
        self.checkpoint = None  # restored: free the tensors

    def rank_states(self, model: torch.nn.Module) -> list[dict[str, Any]]:
        """What differs between ranks, for a checkpoint: each rank's random streams (now and at its epoch's start)
        and, under ``torchrun``, its buffers (BatchNorm statistics differ between ranks inside an epoch) and its
        epoch state (the sums of its own losses, which the epoch's ``train_*`` means reduce over the ranks).
        Every rank must call it."""
        buffers = epoch_state = None
        if distributed.is_distributed():
            buffers = {name: b.detach().cpu().clone() for name, b in model.named_buffers()}
            epoch_state = self.trainer.epoch_state.state_dict()
            epoch_state = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in epoch_state.items()}
        mine = {"now": rng_state(self.generators), "epoch_start": self.trainer.epoch_state.rng_at_start,
                "buffers": buffers, "epoch_state": epoch_state}
        return distributed.gather_objects(mine)

    def epoch_batches(self, loader: Iterable[Any]) -> Iterator[Any]:
        """The loader's batches for the epoch starting now, from where it stands.

        The RNG state before the loader draws its order fixes the epoch's data; it is kept in the
        epoch state, so after a mid-epoch resume the order is drawn again from it, the batches
        already trained are skipped (checked to hold as many samples), and the streams continue
        from the checkpoint.
        """
        state = self.trainer.epoch_state
        self.generators = _loader_generators(loader)
        resuming = state.batches > 0
        if self._rng_now is not None and not resuming:  # resumed at an epoch's end: continue its streams
            self._restore_rng(self._rng_now)
            self._rng_now = None
        if resuming:
            self._restore_rng(state.rng_at_start)
        else:
            state.rng_at_start = rng_state(self.generators)
        batches = iter(loader)
        if resuming:
            _skip_done_batches(batches, state)
            self._restore_rng(self._rng_now)
            self._rng_now = None
        return batches

    def _this_rank_state(self, state: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None, Any, Any]:
        """This rank's saved streams (now, and at the epoch's start), buffers and epoch state (``None``: the
        checkpoint's); fresh streams at another world size."""
        saved = state["rng"]
        if isinstance(saved, Mapping):  # written by one process before per-rank streams were kept
            return dict(saved), state["epoch_state"].get("rng_at_start"), None, None
        rank = distributed.rank()
        if len(saved) != distributed.world_size():
            if state["epoch_state"]["batches"] > 0:
                raise CheckpointError(f"'{self.path}' was written in the middle of an epoch by {len(saved)} processes; "
                                      f"resuming it with {distributed.world_size()} would split that epoch's remaining "
                                      "batches differently. Resume with the same number of processes, or from a "
                                      "checkpoint written at an epoch's end.")
            # another number of processes: each rank continues a stream of its own, drawn from the run's seed
            seed_everything(distributed.rank_seed(self.trainer.seed + state["global_step"], rank))
            return rng_state(), None, None, None
        mine = saved[rank]
        return mine["now"], mine["epoch_start"], mine.get("buffers"), mine.get("epoch_state")

    def _restore_rng(self, state: dict[str, Any] | None) -> None:
        if state is not None and not set_rng_state(state, self.generators):
            warnings.warn(f"the checkpoint's data loader had {len(state.get('generators', []))} random generators, this "
                          f"one has {len(self.generators)}: the resumed run cannot replay the data order exactly. "
                          "Resume with the same loader (same shuffle and generator).", stacklevel=4)


def _skip_done_batches(batches: Iterator[Any], state: EpochState) -> None:
    """Skip the micro-batches a mid-epoch checkpoint had trained, checking they hold the same samples."""
    samples = 0
    for done in range(state.batches):
        batch = next(batches, None)
        if batch is None:
            raise CheckpointError(f"the checkpoint was written after {state.batches} batches of this epoch, but "
                                  f"the loader now has only {done}: resume with the data it was trained on")
        samples += batch_size_of(batch)
    if samples != state.samples:
        raise CheckpointError(f"the checkpoint was written after {state.batches} batches ({state.samples} "
                              f"samples) of this epoch, but those batches now hold {samples} samples: the batch "
                              "size (or data) changed, so skipping them would re-train or skip samples. Resume "
                              "with the same batch size, or from a checkpoint written at an epoch's end.")


def _loader_generators(loader: Any) -> list[torch.Generator]:
    """The private generators a loader shuffles with (``DataLoader(generator=...)``), which the global RNG does not cover."""
    found: list[torch.Generator] = []
    batch_sampler = getattr(loader, "batch_sampler", None)
    for part in (loader, getattr(loader, "sampler", None), getattr(batch_sampler, "sampler", None)):
        generator = getattr(part, "generator", None)
        if isinstance(generator, torch.Generator) and all(generator is not g for g in found):
            found.append(generator)
    return found


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists and tuples compare as lists)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = list(value) if isinstance(value, tuple) else value
    return flat


def config_changes(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``"key: old -> new"`` for every setting that differs between two resolved configs."""
    old, new = flatten(saved), flatten(current)
    missing = object()
    return [f"{key}: {old.get(key, missing)!r} -> {new.get(key, missing)!r}".replace(repr(missing), "(unset)")
            for key in sorted(set(old) | set(new)) if old.get(key, missing) != new.get(key, missing)]


def restore(trainer: Any, state: dict[str, Any], path: Path) -> list[str]:
    """Load ``state`` into ``trainer`` under the policy above; return the changes, also issued as one warning.

    Raises:
        CheckpointError: another model or optimizer class, or a change that cannot be honoured.
    """
    saved_config = state["config"]
    if trainer.config.seed is None:  # the checkpoint's RNG streams continue: its seed is this run's seed
        trainer.seed = saved_config["trainer"].get("seed")
    changes = config_changes(saved_config, trainer.resolved_config())
    _check_model(trainer, state, path)
    _check_optimizer_class(trainer, saved_config, path)
    mid_epoch = state["epoch_state"] is not None and state["epoch_state"]["batches"] > 0
    if mid_epoch and saved_config["trainer"]["accumulate"] != trainer.config.accumulate:
        raise CheckpointError(f"'{path}' was written in the middle of an epoch with accumulate="
                              f"{saved_config['trainer']['accumulate']}; resuming it with accumulate="
                              f"{trainer.config.accumulate} would split that epoch's steps differently. Resume with "
                              "the same accumulate, or from a checkpoint written at an epoch's end.")
    trainer.load_checkpoint_model_state(state["model"], state.get("metadata") or {})
    trainer.load_extra_state(state["trainer"])
    current_groups = [{k: v for k, v in g.items() if k != "params"} for g in trainer.optimizer.param_groups]
    try:
        trainer.optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError) as err:
        raise CheckpointError(f"checkpoint '{path}' has optimizer state that does not fit this optimizer ({err}); "
                              "resume with the same optimizer and parameter groups") from None
    changes += _apply_group_settings(trainer, current_groups, state["optimizer"]["param_groups"])
    changes += _restore_schedule(trainer, state, current_groups, path)
    if trainer.scaler is not None and state["scaler"] is not None:
        trainer.scaler.load_state_dict(state["scaler"])
    for key, callback in trainer.callbacks_by_key().items():
        if key in state["callbacks"]:
            callback.load_state_dict(state["callbacks"][key])
    trainer.epoch, trainer.global_step = state["epoch"], state["global_step"]
    trainer.skipped_steps, trainer.history = state["skipped_steps"], list(state["history"])
    if changes:
        warnings.warn(f"resuming '{path}' (epoch {trainer.epoch}, step {trainer.global_step}) with settings that "
                      "differ from the checkpoint's:\n  " + "\n  ".join(changes), ResumeChangeWarning, stacklevel=4)
    return changes


def _check_model(trainer: Any, state: dict[str, Any], path: Path) -> None:
    own, theirs = trainer.checkpoint_model_state(), state["model"]
    problems = [f"missing {k}" for k in own if k not in theirs] + [f"unexpected {k}" for k in theirs if k not in own]
    problems += [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                 for k, v in theirs.items() if k in own and v.shape != own[k].shape]
    if problems:
        shown = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise CheckpointError(f"checkpoint '{path}' was saved from a different model ({len(problems)} mismatched "
                              f"keys: {shown}). Resume with the model it was trained with, or load only matching "
                              "weights with warmstart.finetune.load_pretrained.")


def _check_optimizer_class(trainer: Any, saved_config: Mapping[str, Any], path: Path) -> None:
    saved, now = saved_config["optimizer"]["class"], type(trainer.optimizer).__name__
    if saved != now:
        raise CheckpointError(f"checkpoint '{path}' was trained with {saved}, but this trainer's optimizer is {now}: "
                              f"{now} cannot continue from {saved}'s state. Resume with {saved}, or start a new run "
                              "from the weights (warmstart.finetune.load_pretrained) to switch optimizers.")


def _base_lr(group: Mapping[str, Any]) -> float:
    return float(group.get("initial_lr", group["lr"]))


def _apply_group_settings(trainer: Any, current: list[dict[str, Any]], saved: list[dict[str, Any]]) -> list[str]:
    """Put the new trainer's group settings (all but the learning rate) back over the loaded ones."""
    changes = []
    for index, (group, new, old) in enumerate(zip(trainer.optimizer.param_groups, current, saved)):
        label = group.get("name", index)
        for key, value in new.items():
            if key in ("lr", "initial_lr", "params"):
                continue
            before = list(old[key]) if isinstance(old.get(key), tuple) else old.get(key)
            after = list(value) if isinstance(value, tuple) else value
            if before != after:
                group[key] = value
                changes.append(f"optimizer group {label}: {key} {before!r} -> {after!r} (applied)")
    return changes


def _restore_schedule(trainer: Any, state: dict[str, Any], current: list[dict[str, Any]], path: Path) -> list[str]:
    """Set each group's learning rate for the step reached, under the new trainer's schedule."""
    saved_schedule, now = state["config"].get("scheduler"), trainer.schedule_description()
    step, scheduler = state["global_step"], trainer.scheduler
    new_bases = [_base_lr(g) for g in current]
    old_bases = [_base_lr(g) for g in state["optimizer"]["param_groups"]]
    changes = [f"optimizer group {g.get('name', i)}: lr {old!r} -> {new!r} (applied)"
               for i, (g, old, new) in enumerate(zip(trainer.optimizer.param_groups, old_bases, new_bases))
               if not math.isclose(old, new, rel_tol=1e-12)]
    if scheduler is None:
        for group, base in zip(trainer.optimizer.param_groups, new_bases):
            group["lr"] = base
        if saved_schedule is not None:
            changes.append(f"no schedule now (the checkpoint had {_describe(saved_schedule)}): constant learning "
                           "rate from here on")
    elif isinstance(scheduler, LambdaLR) and now.get("name") is not None:
        position_schedule(scheduler, trainer.optimizer, new_bases, step)
        if saved_schedule != now:
            changes.append(f"schedule {_describe(now)} replaces {_describe(saved_schedule)}, positioned at step "
                           f"{step}: lr now {trainer.current_lr():.4g}")
    elif isinstance(scheduler, Plateau) and now.get("name") is not None:
        same = saved_schedule == now and state["scheduler"] is not None
        if same:
            scheduler.load_state_dict(state["scheduler"])
        else:
            changes.append(f"schedule {_describe(now)} replaces {_describe(saved_schedule)} from step {step}")
        for group, base, old in zip(trainer.optimizer.param_groups, new_bases, old_bases):
            if not same or not math.isclose(old, base, rel_tol=1e-12):
                group["lr"] = base  # a new base rate (or a new plateau schedule) restarts the reductions
    else:
        _load_scheduler_object(scheduler, state, saved_schedule, now, changes, path)
    return changes


def position_schedule(scheduler: LambdaLR, optimizer: torch.optim.Optimizer, bases: list[float], step: int) -> None:
    """Put a multiplier schedule at ``step`` with these base rates: ``lr = base * factor(step)`` for each group."""
    scheduler.base_lrs = list(bases)
    scheduler.last_epoch = step
    for group, base, factor in zip(optimizer.param_groups, bases, scheduler.lr_lambdas):
        group["initial_lr"] = base
        group["lr"] = base * factor(step)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def _load_scheduler_object(scheduler: Any, state: dict[str, Any], saved: Any, now: Any, changes: list[str],
                           path: Path) -> None:
    """A scheduler object resumes only from the same schedule: it cannot be re-planned, so a change is refused."""
    how = ("pass the schedule by name (scheduler={'name': 'cosine', ...}) so that warmstart re-plans it, or resume "
           "with the same scheduler and learning rate")
    if saved != now or state["scheduler"] is None:
        raise CheckpointError(f"checkpoint '{path}' was trained with {_describe(saved)}; this trainer has "
                              f"{_describe(now)}, an object that cannot be positioned at step {state['global_step']}: "
                              + how)
    theirs = {k: v for k, v in state["scheduler"].items() if k not in _SCHEDULER_COUNTERS}
    ours = {k: v for k, v in scheduler.state_dict().items() if k not in _SCHEDULER_COUNTERS}
    rate_changes = [c for c in changes if " lr " in c]
    if theirs != ours or rate_changes:
        differing = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        raise CheckpointError(f"the {type(scheduler).__name__} passed to this trainer differs from the checkpoint's "
                              f"({', '.join(differing) or 'learning rate'}): " + how)
    scheduler.load_state_dict(state["scheduler"])


def _describe(schedule: Any) -> str:
    if schedule is None:
        return "no schedule"
    if schedule.get("name") is not None:
        steps = schedule.get("total_steps")
        return f"'{schedule['name']}'" + (f" over {steps} steps" if steps else "")
    return f"a {schedule.get('class')} object"
