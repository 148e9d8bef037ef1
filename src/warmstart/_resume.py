"""Resume policy: load a checkpoint into a trainer and say what differs from the run that wrote it.

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
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from warmstart.errors import CheckpointError

LambdaLR = torch.optim.lr_scheduler.LambdaLR
Plateau = torch.optim.lr_scheduler.ReduceLROnPlateau
# scheduler entries that say where it is, not what it is
_SCHEDULER_COUNTERS = ("last_epoch", "_step_count", "_last_lr", "_get_lr_called_within_step", "verbose")


class ResumeChangeWarning(UserWarning):
    """A resumed run's settings differ from the checkpoint's: the warning lists each change and what was done."""


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
        _position(scheduler, trainer.optimizer, new_bases, step)
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


def _position(scheduler: LambdaLR, optimizer: torch.optim.Optimizer, bases: list[float], step: int) -> None:
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
