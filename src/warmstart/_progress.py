"""Progress output: a tqdm bar on a terminal, one plain line every ``log_every`` steps elsewhere."""

from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm


def format_metrics(metrics: dict[str, Any]) -> str:
    """Render ``{"loss": 0.123456, "lr": 0.001}`` as ``loss 0.1235 lr 1.00e-03``."""
    parts = []
    for key, value in metrics.items():
        if isinstance(value, float):
            text = f"{value:.2e}" if key == "lr" or (value != 0 and abs(value) < 1e-3) else f"{value:.4g}"
        else:
            text = str(value)
        parts.append(f"{key} {text}")
    return " ".join(parts)


class ProgressReporter:
    """Show training progress without reading tensors: callers pass host numbers only.

    Args:
        enabled: print anything at all (False on non-zero ranks and when ``progress=False``).
        bar: use a tqdm bar; defaults to whether stdout is a terminal, so CI logs stay readable.
    """

    def __init__(self, enabled: bool, bar: bool | None = None):
        self.enabled = enabled
        self.use_bar = enabled and (sys.stdout.isatty() if bar is None else bar)
        self._bar: tqdm | None = None

    def start_epoch(self, epoch: int, max_epochs: int | None, total_steps: int | None, initial: int = 0) -> None:
        """Open the bar for an epoch (``total_steps`` optimizer steps, ``initial`` already done)."""
        if self.use_bar:
            self._bar = tqdm(total=total_steps, initial=initial, desc=f"epoch {epoch + 1}/{max_epochs or '?'}",
                             dynamic_ncols=True, leave=True, file=sys.stdout)

    def step(self) -> None:
        """Advance the bar by one optimizer step (host-side only, no tensor is read)."""
        if self._bar is not None:
            self._bar.update(1)

    def log(self, epoch: int, step: int, metrics: dict[str, Any]) -> None:
        """Show the metrics read at a ``log_every`` boundary."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_postfix_str(format_metrics(metrics), refresh=False)
        else:
            print(f"epoch {epoch + 1} step {step} {format_metrics(metrics)}", flush=True)

    def end_epoch(self, epoch: int, metrics: dict[str, Any]) -> None:
        """Close the bar and print the epoch summary line."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self.enabled:
            print(f"epoch {epoch + 1}: {format_metrics(metrics)}", flush=True)

    def close(self) -> None:
        """Close an open bar (after an error)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
