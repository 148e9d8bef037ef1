"""OpenMP settings that hold up when other work shares the cores, set before torch is loaded."""

from __future__ import annotations

import os
import sys

# torch's CPU kernels run on GNU OpenMP threads, which by default spin for a long while when they wait; a thread
# that spins for a core another process holds slows the whole step (bench/busy.py: 3.5-15x beside two busy
# processes). Spinning this long and then sleeping costs nothing measurable on a quiet machine.
SPINCOUNT = "10000"
USER_SETTINGS = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")


def hold_up_under_load() -> str | None:
    """Set ``GOMP_SPINCOUNT`` for this process and its children, unless the user set it (or ``OMP_WAIT_POLICY``)
    or torch is already loaded (OpenMP reads it once, when torch loads).

    Returns:
        What was set (``"GOMP_SPINCOUNT=10000"``), or ``None`` where nothing was.
    """
    if "torch" in sys.modules or any(name in os.environ for name in USER_SETTINGS):
        return None
    os.environ["GOMP_SPINCOUNT"] = SPINCOUNT
    return f"GOMP_SPINCOUNT={SPINCOUNT}"
