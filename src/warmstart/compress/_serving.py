"""Files for serving, checked where they will run: written, loaded in a fresh process without warmstart, compared."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from warmstart.compress._export import export
from warmstart.compress._fresh import run_in_fresh_process
from warmstart.compress._latency import measure_latency
from warmstart.errors import ConfigError


def export_for_serving(models: Mapping[str, nn.Module], example: torch.Tensor, out_dir: str | os.PathLike, *,
                       eager_latency_ms: Mapping[str, float] | None = None) -> dict[str, dict[str, Any]]:
    """Write ``model.pt2`` and ``model.onnx`` into ``out_dir`` and check each in a fresh process against eager PyTorch.

    ``models`` holds one or two labelled models: the first is written as ``model.pt2``; the last (the float
    model, when the first is quantized) as ``model.onnx``, and as ``model.pt2`` when the first cannot be
    exported. Both files are loaded and run in one ``python -I -S`` process that cannot import warmstart
    (:func:`run_in_fresh_process`) on ``example``.

    Args:
        models: ``{label: model}``, the model to serve first.
        example: an input batch: traced for the export, then run in both processes.
        out_dir: the folder the files are written into.
        eager_latency_ms: each label's latency as already measured (``None``: measured here).

    Returns:
        Per file name: ``model`` (the label written), ``bytes``, ``latency_ms`` (median, fresh process),
        ``eager_latency_ms``, ``max_abs_difference`` and ``same_predictions`` (the share of equal argmaxes)
        against the eager model; a ``note`` says why a file was not written or not timed.

    Raises:
        ConfigError: no model given.

    Examples:
        >>> rows = export_for_serving({"float": small_model}, batch, "serve/")  # doctest: +SKIP
        >>> rows["model.pt2"]["same_predictions"]  # doctest: +SKIP
        1.0
    """
    labelled = list(models.items())
    if not labelled:
        raise ConfigError("export_for_serving: models is empty; pass {label: model}, the model to serve first")
    first, last = labelled[0], labelled[-1]
    files: dict[str, tuple[str, nn.Module, Path]] = {}
    notes: dict[str, str] = {}
    for name, (label, model), kind in dict.fromkeys((("model.pt2", first, "pt2"), ("model.pt2", last, "pt2"),
                                                     ("model.onnx", last, "onnx"))):
        if name in files:
            continue
        try:
            files[name] = (label, model, export(model, example, Path(out_dir) / name, format=kind))
        except ConfigError as err:  # a model a graph cannot capture, or no deploy extra for ONNX
            notes[name] = f"{label}: not exported ({err})" + ("; the float model instead" if first is not last
                                                               and model is first[1] else "")
    exported: dict[str, dict[str, Any]] = {name: {"note": note} for name, note in notes.items()}
    try:
        runs = run_in_fresh_process([path for *_, path in files.values()], [example]) if files else {}
    except ConfigError as err:  # the files are written; only their timing failed
        return {name: {"note": f"written, but not timed in a fresh process: {err}"} for name in files} | exported
    for name, (label, model, path) in files.items():
        served = runs[str(path.resolve())]
        with torch.no_grad():
            eager = model.eval()(example)
        latency = (eager_latency_ms or {}).get(label)
        exported[name] = {**exported.get(name, {}), "model": label, "bytes": path.stat().st_size,
                          "latency_ms": round(served.latency_ms, 3),
                          "eager_latency_ms": round(1e3 * measure_latency(model, example), 3) if latency is None
                          else latency,
                          "max_abs_difference": float((served.outputs[0] - eager).abs().max()),
                          "same_predictions": float((served.outputs[0].argmax(1) == eager.argmax(1)).float().mean())}
    return exported
