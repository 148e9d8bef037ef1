"""Exception types: every error warmstart raises on bad input says what is wrong and how to fix it."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class WarmstartError(Exception):
    """Base class of the errors warmstart raises for bad input or bad state."""


class ConfigError(WarmstartError, ValueError):
    """A configuration value, key or option is invalid."""


class CheckpointError(WarmstartError, RuntimeError):
    """A checkpoint or weight file is missing, corrupt, or belongs to another model."""


class DataError(WarmstartError, ValueError):
    """A data loader or batch cannot be trained on (empty, labels out of range, ...)."""


class NonFiniteLossError(WarmstartError, FloatingPointError):
    """A training loss, or an evaluation's outputs, became NaN or infinite."""


class OutDirBusyError(WarmstartError, RuntimeError):
    """Another live run holds the ``out_dir`` lock: two runs writing one folder would overwrite each other."""


class RunExistsError(WarmstartError, FileExistsError):
    """A fresh run was pointed at a folder holding an earlier run, which it would destroy.

    Continue that run (``resume="last"``), write elsewhere, or ask for it explicitly (``overwrite=True``,
    ``warmstart ... --overwrite``).
    """


def nearest(name: str, valid: Iterable[str]) -> str:
    """Return a ``did you mean`` hint for ``name`` among ``valid`` (or an empty string).

    Examples:
        >>> nearest("adamm", ["adam", "sgd"])
        " (did you mean 'adam'?)"
    """
    match = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def unknown_name_error(kind: str, name: str, valid: Iterable[str]) -> ConfigError:
    """Build the error for an unknown ``kind`` name that lists the valid ones and the nearest."""
    valid = sorted(valid)
    return ConfigError(f"unknown {kind} '{name}'{nearest(name, valid)}; valid: {', '.join(valid)}")
