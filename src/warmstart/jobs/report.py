"""What ``warmstart run`` leaves for a person: a printed table, results.json, report.md and PNG plots."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from warmstart.checkpoint import atomic_path
from warmstart.config import to_dict

LABELS = {
    "pretrain": "pretrained on the source (source test set)",
    "zero_shot": "pretrained, zero-shot on the target",
    "scratch": "from scratch (no pretrained weights)",
    "linear_probe": "linear probe (frozen backbone)",
    "partial": "partial (first layer group frozen)",
    "full": "full fine-tune (backbone at 0.1x lr)",
    "gradual": "gradual unfreezing",
    "proximal": "full fine-tune + proximal term",
    "recipe": "fine_tune() recipe",
    "recipe_scratch": "fine_tune() recipe, no pretrained weights",
    "student_scratch": "student on the labels alone, same epochs (control)",
    "student_distilled": "student distilled from the best model",
    "student_hard_same_steps": "same student, hard labels, as many optimizer steps as the distilled one (control)",
}
STUDENTS = ("student_scratch", "student_distilled", "student_hard_same_steps")


def table_rows(results: dict[str, dict[str, Any]]) -> list[str]:
    """The results as markdown table rows: method, test and validation accuracy, parameters, seconds."""
    rows = ["| method | test accuracy (%) | validation accuracy (%) | parameters | seconds |", "|---|---:|---:|---:|---:|"]
    for name, r in results.items():
        if "accuracy" in r:
            val = f"{100 * r['val_accuracy']:.1f}" if "val_accuracy" in r else "-"
            label = LABELS.get(name, name) + (f" (chose {r['choice']})" if "choice" in r else "")
            rows.append(f"| {label} | {100 * r['accuracy']:.1f} | {val} | {r['params']:,} | {r['seconds']:.1f} |")
    return rows


def print_table(results: dict[str, dict[str, Any]]) -> None:
    """Print the results table."""
    print("\n".join(table_rows(results)))
    if "total" in results:
        print(f"total: {results['total']['seconds']:.1f} s")


def _write_json(path: Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2))


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend, or ``None`` when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save_figure(fig: Any, path: Path) -> None:
    """Write a figure as a PNG, atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def plot_curves(curves: dict[str, list[dict[str, Any]]], path: Path, title: str,
                labels: Mapping[str, str] = LABELS) -> bool:
    """Plot validation accuracy per epoch for each method (named by ``labels``); False when matplotlib is missing."""
    plt = pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, history in curves.items():
        points = [100 * h["val_accuracy"] for h in history if "val_accuracy" in h]
        if points:
            ax.plot(range(1, len(points) + 1), points, marker="o" if len(points) < 8 else None,
                    label=labels.get(name, name))
    ax.set(xlabel="epoch", ylabel="validation accuracy (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return True


def plot_bars(results: dict[str, dict[str, Any]], path: Path, title: str) -> bool:
    """A bar chart of each model's test accuracy (the pretrained model's on its source); False without matplotlib."""
    plt = pyplot()
    if plt is None:
        return False
    names = [n for n, r in results.items() if "accuracy" in r]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = ["#999999" if n == "pretrain" else "#c07030" if n in STUDENTS else "#4878a8" for n in names]
    bars = ax.barh([LABELS.get(n, n) for n in names], [100 * results[n]["accuracy"] for n in names], color=colours)
    ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel="test accuracy (%)", xlim=(0, 100), title=title)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return True


def _story(cfg: dict[str, Any], results: dict[str, dict[str, Any]]) -> str:
    student = cfg["distill"]["student"]
    teacher = results.get("student_distilled", {}).get("teacher")
    shots = cfg["target"]["shots"]
    transfer = ("every image of the target's training split without its label (the teacher labels it)"
                if cfg["distill"]["unlabelled"] else "the labelled images")
    lines = [f"Pretrained `{cfg['model']['name']}` {cfg['model']['args']} on `{cfg['source']['name']}`, then fine-tuned "
             f"it on `{cfg['target']['name']}` with {shots or 'all'} labelled examples per class by each method. "
             f"Choices use a validation split of {cfg['target']['val_per_class']} labelled images per class held out of "
             "the target's training split; test accuracy is measured once per model, on the target's test split "
             "(the pretraining row: the source's test split)."]
    if teacher is not None:
        lines.append(f"The teacher is the {LABELS.get(teacher, teacher)} model (best validation accuracy); the student "
                     f"is `{student['name']}` {student['args']}, distilled on {transfer}, next to the same student "
                     "trained on the labels alone with the same optimizer.")
        lines.append(student_gains(results))
    return " ".join(line for line in lines if line)


def student_gains(results: dict[str, dict[str, Any]], distilled: str = "student_distilled",
                  control: str = "student_scratch", subject: str = "The distilled student") -> str:
    """One sentence: the ``distilled`` student's gain in test accuracy over each hard-label control, with their steps.

    The controls are ``control`` (the same epochs on the labels alone) and ``student_hard_same_steps``
    (the labels alone for as many optimizer steps as the distilled student); '' without the first two rows.

    Examples:
        >>> student_gains({"student_scratch": {"accuracy": 0.5, "steps": 40},
        ...                "student_distilled": {"accuracy": 0.7, "steps": 400},
        ...                "student_hard_same_steps": {"accuracy": 0.6, "steps": 400}})
        'The distilled student against the labels alone: +20.0 points at the same epochs (400 against 40 optimizer steps), +10.0 points at as many optimizer steps (400).'
    """
    taught, hard, same = results.get(distilled), results.get(control), results.get("student_hard_same_steps")
    if taught is None or hard is None:
        return ""
    gains = [f"{100 * (taught['accuracy'] - hard['accuracy']):+.1f} points at the same epochs "
             f"({taught['steps']:,} against {hard['steps']:,} optimizer steps)"]
    if same is not None:
        gains.append(f"{100 * (taught['accuracy'] - same['accuracy']):+.1f} points at as many optimizer steps "
                     f"({same['steps']:,})")
    return f"{subject} against the labels alone: {', '.join(gains)}."


def write_report(out: Path, job: Any, results: dict[str, dict[str, Any]], curves: dict[str, list[dict[str, Any]]],
                 command: str) -> None:
    """Write ``results.json``, ``curves.json``, ``report.md`` and the PNG plots into ``out``."""
    _write_json(out / "results.json", results)
    _write_json(out / "curves.json", curves)
    cfg = to_dict(job)
    transfer = {k: v for k, v in curves.items() if k not in ("pretrain", *STUDENTS)}
    plots = []
    if plot_curves(transfer, out / "finetune_curves.png", f"Fine-tuning on {cfg['target']['name']}"):
        plots.append(("Fine-tuning methods, validation accuracy per epoch", "finetune_curves.png"))
    students = {k: v for k, v in curves.items() if k in STUDENTS}
    if students and plot_curves(students, out / "distill_curves.png", "Student: distilled vs. labels alone"):
        plots.append(("Students, validation accuracy per epoch", "distill_curves.png"))
    title = f"{cfg['source']['name']} -> {cfg['target']['name']}, {cfg['target']['shots'] or 'all'} labels per class"
    if plot_bars(results, out / "accuracy.png", title):
        plots.append(("Test accuracy by model (grey: the source task)", "accuracy.png"))
    lines = [
        "# warmstart run report", "",
        _story(cfg, results), "",
        *table_rows(results), "",
        f"Total time: {results.get('total', {}).get('seconds', 0):.1f} s. The full config is `job.yaml`; run it again "
        f"with `{command}`. Each stage's checkpoints, metrics.csv and its own job.yaml are in its sub-folder.", "",
    ]
    write_markdown(out, lines, plots)


def write_markdown(out: Path, lines: list[str], plots: list[tuple[str, str]]) -> None:
    """Write ``out/report.md``: ``lines``, then each plot under its caption (or a note that plots need matplotlib)."""
    for caption, name in plots:
        lines += [f"## {caption}", "", f"![{caption}]({name})", ""]
    if not plots:
        lines += ["(Plots need matplotlib: pip install 'warmstart[examples]'.)", ""]
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text("\n".join(lines))
