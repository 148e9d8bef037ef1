"""What ``warmstart run`` leaves for a person: a printed table, results.json, report.md and PNG plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from warmstart.checkpoint import atomic_path
from warmstart.config import to_dict

LABELS = {
    "pretrain": "pretrained on the source (source test set)",
    "zero_shot": "pretrained, zero-shot on the target",
    "scratch": "from scratch",
    "linear_probe": "linear probe (frozen backbone)",
    "partial": "partial (first layer group frozen)",
    "full": "full fine-tune (backbone at 0.1x lr)",
    "gradual": "gradual unfreezing",
    "proximal": "full fine-tune + proximal term",
    "recipe": "fine_tune() recipe",
    "student_scratch": "student from scratch (labels)",
    "student_distilled": "student distilled from the best model",
}


def table_rows(results: dict[str, dict[str, Any]]) -> list[str]:
    """The results as markdown table rows: method, accuracy, parameters, seconds."""
    rows = ["| method | accuracy (%) | parameters | seconds |", "|---|---:|---:|---:|"]
    for name, r in results.items():
        if "accuracy" in r:
            rows.append(f"| {LABELS.get(name, name)} | {100 * r['accuracy']:.1f} | {r['params']:,} | {r['seconds']:.1f} |")
    return rows


def print_table(results: dict[str, dict[str, Any]]) -> None:
    """Print the results table."""
    print("\n".join(table_rows(results)))
    if "total" in results:
        print(f"total: {results['total']['seconds']:.1f} s")


def _write_json(path: Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2))


def _pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend, or ``None`` when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _save(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def plot_curves(curves: dict[str, list[dict[str, Any]]], path: Path, title: str) -> bool:
    """Plot validation accuracy per epoch for each method; False when matplotlib is missing."""
    plt = _pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, history in curves.items():
        points = [100 * h["val_accuracy"] for h in history if "val_accuracy" in h]
        if points:
            ax.plot(range(1, len(points) + 1), points, label=LABELS.get(name, name))
    ax.set(xlabel="epoch", ylabel="test accuracy (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return True


def plot_bars(results: dict[str, dict[str, Any]], path: Path) -> bool:
    """A bar chart of each method's accuracy; False when matplotlib is missing."""
    plt = _pyplot()
    if plt is None:
        return False
    names = [n for n, r in results.items() if "accuracy" in r and n != "pretrain"]
    fig, ax = plt.subplots(figsize=(7, 4))
    bars = ax.barh([LABELS.get(n, n) for n in names], [100 * results[n]["accuracy"] for n in names], color="#4878a8")
    ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel="test accuracy on the target task (%)", xlim=(0, 100))
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return True


def write_report(out: Path, job: Any, results: dict[str, dict[str, Any]],
                 curves: dict[str, list[dict[str, Any]]]) -> None:
    """Write ``results.json``, ``curves.json``, ``report.md`` and the PNG plots into ``out``."""
    _write_json(out / "results.json", results)
    _write_json(out / "curves.json", curves)
    transfer = {k: v for k, v in curves.items() if k not in ("pretrain", "student_scratch", "student_distilled")}
    plots = []
    if plot_curves(transfer, out / "finetune_curves.png", "Fine-tuning on the target task"):
        plots.append(("Fine-tuning methods, test accuracy per epoch", "finetune_curves.png"))
    students = {k: v for k, v in curves.items() if k in ("student_scratch", "student_distilled")}
    if students and plot_curves(students, out / "distill_curves.png", "Student: distilled vs. from scratch"):
        plots.append(("Students, test accuracy per epoch", "distill_curves.png"))
    if plot_bars(results, out / "accuracy.png"):
        plots.append(("Accuracy by method", "accuracy.png"))
    cfg = to_dict(job)
    lines = [
        "# warmstart run report", "",
        f"Pretrained `{cfg['model']['name']}` on `{cfg['source']['name']}`, fine-tuned on `{cfg['target']['name']}` "
        f"with {cfg['target']['shots']} labelled examples per class, then distilled the best fine-tuned model into "
        f"`{cfg['student']['name']}` {cfg['student']['args']}. Accuracy is on the target's held-out test split "
        "(the pretraining row: the source's test split).", "",
        *table_rows(results), "",
        f"Total time: {results.get('total', {}).get('seconds', 0):.1f} s. The full config is in `job.yaml` (run it again with `warmstart run job.yaml`); "
        "each stage's checkpoints and metrics.csv are in its sub-folder.", "",
    ]
    for caption, name in plots:
        lines += [f"## {caption}", "", f"![{caption}]({name})", ""]
    if not plots:
        lines += ["(Plots need matplotlib: pip install 'warmstart[examples]'.)", ""]
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text("\n".join(lines))
