"""What every rank must share, compared when training starts: a mismatch fails on every rank at once, not in a hang."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from warmstart.distributed._process_group import gather_objects, is_distributed
from warmstart.errors import ConfigError

SHOWN = 6  # differences named in the message; the rest are counted


def check_ranks_agree(facts: Mapping[str, Any], when: str) -> None:
    """Gather every rank's ``facts`` and raise the same :class:`ConfigError` on every rank when any fact differs.

    Ranks that train with other settings (a learning rate, a model width, ``accumulate``,
    ``max_epochs``, the strategy, the number of batches) either train apart without a word
    (rank 0's weights are saved) or wait forever in a collective that the others never reach.
    One gather at the start, which every rank reaches, turns that into one message naming what
    differs. A no-op in one process.

    Args:
        facts: name -> a plain, comparable value (numbers, strings, lists).
        when: where the check runs, for the message (``"when the Trainer is built"``).

    Raises:
        ConfigError: a fact differs between ranks (the message lists each one with every rank's value).
    """
    if not is_distributed():
        return
    gathered = gather_objects(dict(facts))
    keys = list(dict.fromkeys(key for ranks_facts in gathered for key in ranks_facts))
    differ = []
    for key in keys:
        values = [ranks_facts.get(key) for ranks_facts in gathered]
        if any(value != values[0] for value in values[1:]):
            differ.append(f"{key} ({', '.join(f'rank {r}: {_short(v)}' for r, v in enumerate(values))})")
    if differ:
        more = f" and {len(differ) - SHOWN} more" if len(differ) > SHOWN else ""
        raise ConfigError(f"under torchrun every rank must train alike, but {when} the ranks differ in: "
                          + "; ".join(differ[:SHOWN]) + more + ". Give every rank the same settings, model and data "
                          "(the same script and config), then launch again")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
