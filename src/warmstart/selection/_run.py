"""Training by selection, end to end: claim the run folder, score the candidates (recorded as they finish), train the
choice; ``resume="last"`` skips the trials already recorded."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from warmstart import distributed
from warmstart._runtime import select_device
from warmstart._run_dir import check_out_dir, holds, job_lock
from warmstart.checkpoint import atomic_path
from warmstart.errors import CheckpointError, ConfigError
from warmstart.selection._folds import sample_count
from warmstart.selection._select import BUDGET, CV_BELOW, MIN_TRIAL_STEPS, TELLS_APART, Selection, select
from warmstart.selection._statistics import ALPHA

SELECTION_FILE = "selection.json"  # in out_dir: the plan, every finished trial, and the choice
RECORD_FORMAT = "warmstart-selection-2"

# trial(name, train_loader, val_loader, epochs, seed) -> validation accuracy of a fresh copy trained the name's way
Trial = Callable[[str, Any, Any, int, int], float]
# final(name, seed, resume) -> what the caller returns: the choice trained on all the data into out_dir
Final = Callable[[str, "int | None", "str | None"], Any]


@dataclasses.dataclass(frozen=True)
class SelectionOptions:
    """How a choice is scored (see :func:`warmstart.selection.select`).

    Attributes:
        val_fraction: share of each class held out when the data is too large to cross-validate.
        folds: folds of the cross-validation.
        repeats: repeats of the cross-validation, each with other folds.
        cv_below: cross-validate below this many labelled samples.
        budget: the trials' cost in final runs.
        alpha: the chance of choosing another candidate when all are equally good.
        max_detectable: run no trial when the validation count cannot detect a smaller gain
            (``None``: always run them; see :func:`warmstart.selection.select`).
        min_trial_steps: optimizer steps a trial trains at least.
    """

    val_fraction: float = 0.2
    folds: int = 5
    repeats: int = 1
    cv_below: int = CV_BELOW
    budget: float = BUDGET
    alpha: float = ALPHA
    max_detectable: float | None = TELLS_APART
    min_trial_steps: int = MIN_TRIAL_STEPS


def selection_options(selection: SelectionOptions | Mapping[str, Any] | None, **defaults: Any) -> SelectionOptions:
    """A call's :class:`SelectionOptions`: ``selection`` (an instance, or a mapping of its fields), the call's own
    shorthands (``folds``, ``val_fraction``) filling what it leaves out.

    Raises:
        ConfigError: an unknown field (with the nearest valid one) or a wrong type.
    """
    if isinstance(selection, SelectionOptions):
        return selection
    from warmstart.config import from_dict

    return from_dict(SelectionOptions, {**defaults, **dict(selection or {})}, prefix="selection")


def run_folder(out_dir: str | os.PathLike | None, trainer_options: Mapping[str, Any]) -> tuple[Path | None, bool]:
    """The run folder and ``overwrite`` of a call: its ``out_dir``, else the trainer options' or their config's."""
    config = trainer_options.get("config")
    if out_dir is None:
        out_dir = trainer_options.get("out_dir", None if config is None else config.out_dir)
    overwrite = bool(trainer_options.get("overwrite", False if config is None else config.overwrite))
    return (None if out_dir is None else check_out_dir(out_dir)), overwrite


def trainer_option(options: Mapping[str, Any], name: str, default: Any = None) -> Any:
    """A :class:`warmstart.TrainerConfig` option of a call: given as a keyword, else its ``config``'s, else ``default``."""
    config = options.get("config")
    return options.get(name, getattr(config, name) if config is not None else default)


def epochs_option(epochs: Any, options: dict[str, Any], caller: str) -> int | None:
    """The epochs of a call's final run: ``epochs``, or the trainer option ``max_epochs`` (taken out of ``options``).

    Raises:
        ConfigError: both given (they say the same thing), or a value that is not a whole number >= 1.
    """
    if "max_epochs" in options:
        if epochs is not None:
            raise ConfigError(f"{caller} got both epochs={epochs} and max_epochs={options['max_epochs']}, which say "
                              "the same thing; pass epochs= alone")
        epochs = options.pop("max_epochs")
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise ConfigError(f"{caller}: epochs must be a whole number >= 1, got {epochs!r}")
    return epochs


def train_by_selection(names: Sequence[str], trial: Trial, final: Final, loader: Any, epochs: int, *,
                       caller: str, val_loader: Any = None, out_dir: str | os.PathLike | None = None,
                       overwrite: bool = False, resume: str | None = None, seed: int | None = None,
                       device: str | torch.device = "auto", options: SelectionOptions = SelectionOptions(),
                       cost_of: Mapping[str, float] | None = None, stages: Sequence[str] = (),
                       progress: bool = True) -> tuple[Selection | None, Any]:
    """Choose among ``names`` by validation and train the choice: the one path of ``fine_tune``, ``distill`` and ``recover``.

    1. ``out_dir`` is claimed (and checked for an earlier run, unless resumed) before any trial.
    2. Every candidate is scored by :func:`warmstart.selection.select`; the trials never write into
       ``out_dir`` (they train in memory), and each finished trial is recorded in
       ``out_dir/selection.json`` with the plan it belongs to.
    3. The choice, every candidate's split scores and what the choice could tell are recorded
       there too; a choice that could not tell the candidates apart is stated in a warning.
    4. ``final(choice, seed, resume)`` trains the choice on all the data into ``out_dir``.

    A single candidate is trained at once, with the caller's ``seed`` (``None`` lets the trainer
    draw one), in the claimed folder: there is nothing to choose.

    ``resume="last"`` reads the record: the trials it holds are not run again, and the final run
    continues its own checkpoint. A record of another plan (other candidates, epochs, folds,
    data size or seed) is refused rather than mixed in. Every trial of split ``j`` and the final run
    are seeded from one ``seed`` (drawn once and recorded when not given), so a resumed call ends
    where an uninterrupted one does.

    Args:
        names: the candidates; the first is the default.
        trial: ``trial(name, train, val, epochs, seed)`` trains a fresh copy in memory and returns
            its accuracy on ``val``.
        final: ``final(name, seed, resume)`` trains the choice on all the data and returns the result.
        loader: the labelled training data.
        epochs: epochs of the final run.
        caller: the public call (``"fine_tune"``), named in messages.
        val_loader: labelled validation data to score on instead of splitting ``loader``.
        out_dir: the run folder (``None``: nothing recorded, no resume).
        overwrite: replace an earlier run in ``out_dir``.
        resume: ``None`` or ``"last"``.
        seed: the seed of the trials and the final run (``None``: drawn from torch's generator).
        device: where the trials train (the seed is shared from rank 0 under ``torchrun``).
        options: how the choice is scored.
        cost_of: each candidate's cost per epoch relative to the others (for the reported cost).
        stages: sub-folders of ``out_dir`` the final run writes (checked with it).
        progress: print the choice.

    Returns:
        ``(selection, final's result)``; the selection is ``None`` for a single candidate.

    Raises:
        ConfigError: ``resume`` other than ``None``/``"last"``, ``"last"`` without ``out_dir``, or a
            record of another plan.
        CheckpointError: a damaged ``selection.json``.
        RunExistsError: ``out_dir`` holds an earlier run, not resumed and without ``overwrite``.
    """
    _check_resume(resume, out_dir, caller)
    top = None if out_dir is None else check_out_dir(out_dir)
    claim = contextlib.nullcontext()  # no folder, or one a job already claimed (and checked) for this call
    if top is not None and not holds(top):
        claim = job_lock(top, overwrite, fresh=resume is None, stages=stages, out_key=None,
                         resume_with=f'{caller}(..., resume="last")')
    with claim:
        record = _read(top, caller) if resume == "last" else None
        plan = {"caller": caller, "candidates": list(names), "epochs": epochs, "samples": _size(loader),
                "validation_loader": val_loader is not None, **dataclasses.asdict(options)}
        if len(names) == 1:  # nothing to choose between: the one way, trained into the claimed folder
            if record is not None:
                _agree(record, plan, seed, device, top)  # not a call of another plan's folder
            return None, final(names[0], seed, resume)
        seed = _agree(record, plan, seed, device, top)
        book = _Book(top, {"format": RECORD_FORMAT, "plan": plan, "seed": seed, "trials": [], "selection": None})
        if record is not None and record.get("selection") is not None:  # chosen before: only the final run is left
            picked = Selection.from_dict(record["selection"])
            book.record["trials"] = record["trials"]
        else:
            trials = {} if record is None else {(n, int(s)): float(a) for n, s, a in record["trials"]}
            book.record["trials"] = [[n, s, a] for (n, s), a in trials.items()]
            picked = select(names, lambda n, tr, va, e, s: trial(n, tr, va, e, seed + s), loader, epochs,
                            val_loader=val_loader, val_fraction=options.val_fraction, folds=options.folds,
                            repeats=options.repeats, cv_below=options.cv_below, seed=seed, budget=options.budget,
                            cost_of=cost_of, alpha=options.alpha, done=trials, on_trial=book.trial,
                            max_detectable=options.max_detectable, min_trial_steps=options.min_trial_steps)
        book.choose(picked)
        if progress and distributed.is_main_process():
            print(f"{caller} {picked.summary()}", flush=True)
        if not picked.informative:
            warnings.warn(f"{caller}: {picked.note}", stacklevel=3)
        return picked, final(picked.choice, seed, resume)


class _Book:
    """``selection.json``, rewritten whole after every trial (rank 0; nothing without a run folder)."""

    def __init__(self, top: Path | None, record: dict[str, Any]):
        self.top, self.record = top, record

    def trial(self, name: str, split: int, accuracy: float) -> None:
        self.record["trials"].append([name, split, accuracy])
        self._write()

    def choose(self, picked: Selection) -> None:
        self.record["selection"] = picked.to_dict()
        self._write()

    def _write(self) -> None:
        if self.top is None or not distributed.is_main_process():
            return
        with atomic_path(self.top / SELECTION_FILE) as tmp:
            tmp.write_text(json.dumps(self.record, indent=1))


def read_selection(out_dir: str | os.PathLike) -> Selection | None:
    """The choice recorded in ``out_dir/selection.json`` (``None`` when the run stopped before choosing).

    Raises:
        CheckpointError: a damaged or unknown record.
    """
    record = _read(Path(out_dir), "warmstart")
    return None if record is None or record.get("selection") is None else Selection.from_dict(record["selection"])


def _read(top: Path | None, caller: str) -> dict[str, Any] | None:
    path = None if top is None else top / SELECTION_FILE
    if path is None or not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"'{path}' is damaged ({err}): the trials it recorded cannot be trusted; start a fresh "
                              f"{caller}(...) with overwrite=True, or in another out_dir") from None
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise CheckpointError(f"'{path}' is not a record this warmstart writes (format "
                              f"{record.get('format') if isinstance(record, dict) else None!r}, expected "
                              f"{RECORD_FORMAT!r}); start a fresh {caller}(...) with overwrite=True, or in another "
                              "out_dir")
    return record


def _agree(record: dict[str, Any] | None, plan: dict[str, Any], seed: int | None, device: Any, top: Path | None) -> int:
    """The run's seed; a record of another plan (or seed) is refused, naming what differs."""
    if record is not None:
        # once the choice is made, a longer final run is the trainer's to allow (it warns); the trials' epochs are not
        free = ("epochs",) if record.get("selection") is not None else ()
        differ = [f"{key}: {record['plan'].get(key)!r} recorded, {value!r} now" for key, value in plan.items()
                  if record["plan"].get(key) != value and key not in free]
        if seed is not None and seed != record["seed"]:
            differ.append(f"seed: {record['seed']} recorded, {seed} now")
        if differ:
            raise ConfigError(f"resume='last': the choice recorded in {top / SELECTION_FILE} was planned otherwise ("
                              + "; ".join(differ) + "): resume with the same arguments and data, or start a fresh "
                              "run in another out_dir")
        return int(record["seed"])
    if seed is not None:
        return int(seed)
    where = select_device(device)
    distributed.init_distributed(where)
    drawn = torch.randint(0, 2**31 - 1, (), device=where)  # the caller's torch.manual_seed decides the run
    return int(distributed.broadcast_from_main(drawn).item())


def _size(loader: Any) -> int | None:
    """The training samples, when the loader knows them without a pass over the data (a generator is not consumed)."""
    return sample_count(loader) if hasattr(loader, "dataset_size") or hasattr(getattr(loader, "dataset", None),
                                                                             "__len__") else None


def _check_resume(resume: Any, out_dir: Any, caller: str) -> None:
    if resume is not None and resume != "last":
        raise ConfigError(f"{caller} takes resume=None or resume='last' (continue the run in out_dir: its recorded "
                          f"trials are not run again), got {resume!r}")
    if resume == "last" and out_dir is None:
        raise ConfigError(f"{caller}(resume='last') continues the run recorded in out_dir, but out_dir is None: pass "
                          "the out_dir of the run to continue")
