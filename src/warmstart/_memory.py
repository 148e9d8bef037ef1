"""Peak resident memory (RSS) of one stage of a job: Linux's high-water mark, reset between stages."""

from __future__ import annotations

import contextlib
import ctypes
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_STATUS, _CLEAR = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def reset_peak_rss() -> bool:
    """Start a new high-water mark (Linux: ``echo 5 > /proc/self/clear_refs``); False where that is not possible.

    Heap memory that was freed but is still held by the allocator is handed back first
    (glibc's ``malloc_trim``), so that a stage does not inherit the last one's peak.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        _CLEAR.write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mb() -> float:
    """The process's peak RSS in MiB since the last :func:`reset_peak_rss` (elsewhere: since it started)."""
    with contextlib.suppress(OSError):
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, kB on Linux


@contextlib.contextmanager
def measured() -> Iterator[dict[str, Any]]:
    """Time a block and take its peak RSS: the dict it yields has ``start_rss_mb`` (the RSS when it began) and gets
    ``seconds`` and ``peak_rss_mb`` at the end.

    Examples:
        >>> with measured() as cost:
        ...     _ = [0] * 1000
        >>> sorted(cost)
        ['peak_rss_mb', 'seconds', 'start_rss_mb']
    """
    reset_peak_rss()
    cost: dict[str, Any] = {"start_rss_mb": peak_rss_mb()}  # the high-water mark just reset: the RSS now
    started = time.perf_counter()
    yield cost
    cost["seconds"] = time.perf_counter() - started
    cost["peak_rss_mb"] = peak_rss_mb()
