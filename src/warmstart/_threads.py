"""How many CPU threads a run can use now: the cores it may run on, less those that other work keeps busy."""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from warmstart.config import check_threads

_STAT, _CGROUP, _TASKS = Path("/proc/stat"), Path("/sys/fs/cgroup/cpu.max"), Path("/proc/self/task")
_held: list[int] = []  # the counts of the cpu_threads blocks running now, outermost first
REUSE_SECONDS = 1.0  # an "auto" choice younger than this is reused: sampling the load takes about 10 ms
_last: dict[int, tuple[float, int]] = {}  # torch's setting -> (when, the count chosen under it)


def allowed_cores() -> int:
    """The cores this process may run on: its CPU affinity, capped by a cgroup (v2) CPU quota where one is set."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        quota, period = _CGROUP.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def running_elsewhere(samples: int = 5, interval: float = 0.002) -> float | None:
    """How many threads of other processes are running or waiting for a core now: the median over a few samples of
    the kernel's count of runnable threads, less this process's own (OpenMP threads may still be spinning from the
    last parallel region); ``None`` where the kernel does not say."""
    counts = []
    for index in range(samples):
        try:
            line = next(li for li in _STAT.read_text().splitlines() if li.startswith("procs_running"))
        except (OSError, StopIteration):
            return None
        counts.append(int(line.split()[1]) - _own_running())
        if index + 1 < samples:
            time.sleep(interval)
    return max(0.0, statistics.median(counts))


def _own_running() -> int:
    """This process's threads that are running (state R), the reading one included (1 where Linux does not say)."""
    running = 0
    for task in _TASKS.glob("*/stat"):
        try:
            running += task.read_text().rsplit(")", 1)[1].split()[0] == "R"
        except (OSError, IndexError):
            continue
    return max(1, running)


def choose_threads(limit: int) -> int:
    """Intra-op threads for work that starts now: the allowed cores that other work leaves free, at least 1 and
    at most ``limit`` (the number the user or torch set)."""
    others = running_elsewhere()
    free = allowed_cores() - (0 if others is None else math.ceil(others))
    return max(1, min(limit, free))


def _recent_choice(limit: int) -> int:
    """:func:`choose_threads`, or its choice of less than :data:`REUSE_SECONDS` ago (a loop of small evaluations
    would otherwise spend most of its time sampling the load)."""
    now = time.monotonic()
    when, threads = _last.get(limit, (-math.inf, 0))
    if now - when >= REUSE_SECONDS:
        threads = choose_threads(limit)
        _last[limit] = (now, threads)
    return threads


@contextlib.contextmanager
def cpu_threads(setting: int | str | None, device: torch.device) -> Iterator[int]:
    """Run the block with ``setting``'s intra-op threads on a CPU device (see ``TrainerConfig.threads``), and
    give torch's own setting back afterwards; yields the count in force. Inside another such block (an
    evaluation during a fit) ``"auto"`` keeps the count in force, so that one run uses one count throughout."""
    check_threads(setting)
    before = torch.get_num_threads()
    if setting is None or device.type != "cpu" or (setting == "auto" and _held):
        threads = before
    else:
        threads = _recent_choice(before) if setting == "auto" else int(setting)
    if threads != before:
        torch.set_num_threads(threads)
    _held.append(threads)
    try:
        yield threads
    finally:
        _held.pop()
        if threads != before:
            torch.set_num_threads(before)
