"""What the text pipeline leaves for a person: a table, results.json, report.md, and two plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from warmstart.checkpoint import atomic_path
from warmstart.config import to_dict
from warmstart.jobs.report import plot_curves, pyplot, save_figure, student_gains, write_markdown

LABELS = {
    "majority": "majority class",
    "linear_probe": "linear probe (frozen mean-pooled embeddings)",
    "scratch": "full fine-tune from random weights (control)",
    "full": "full fine-tune",
    "lora": "LoRA",
    "lora_proximal": "LoRA + proximal term",
    "student_hard": "student, hard labels, same epochs (control)",
    "student_human": "student, raters' label distributions",
    "student_teacher_labelled": "student distilled, labelled words",
    "student_teacher": "student distilled, labelled + unlabelled words",
    "student_hard_same_steps": "same student, hard labels, as many optimizer steps as the distilled one (control)",
    "student_all_labels": "reference: student on every training label, the hidden ones too",
}
STUDENTS = ("student_hard", "student_human", "student_teacher_labelled", "student_teacher", "student_hard_same_steps",
            "student_all_labels")


def _label(name: str, row: dict[str, Any]) -> str:
    extra = f" (teacher: {LABELS.get(row['teacher'], row['teacher'])})" if "teacher" in row else ""
    return LABELS.get(name, name) + extra


def table_rows(results: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown rows: accuracy, trainable parameters (and their share of the model), memory and time."""
    rows = ["| method | test accuracy (%) | validation accuracy (%) | trainable parameters | peak RSS (MB) | "
            "seconds per epoch | seconds |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        if "accuracy" not in r:
            continue
        share = f" ({100 * r['trainable'] / r['params']:.2f}%)" if r.get("params") and r["trainable"] != r["params"] else ""
        memory = f"{r['peak_rss_mb']:,.0f}" if "peak_rss_mb" in r else "-"
        epoch = r.get("seconds_per_epoch")
        per_epoch = "-" if epoch is None else f"{epoch:.1f}" if epoch >= 1 else f"{epoch:.2f}"
        rows.append(f"| {_label(name, r)} | {100 * r['accuracy']:.1f} | {100 * r['val_accuracy']:.1f} | "
                    f"{r['trainable']:,}{share} | {memory} | {per_epoch} | {r['seconds']:.1f} |")
    return rows


def checkpoint_line(results: dict[str, dict[str, Any]]) -> str:
    """One sentence on the sizes of the full and the LoRA checkpoints, or '' when either is missing."""
    full = results.get("full", {}).get("checkpoint_bytes")
    lora = results.get("lora", {}).get("checkpoint_bytes")
    if not (full and lora):
        return ""
    return (f"Weights file (`last.safetensors`): full fine-tune {full / 2**20:.1f} MiB, LoRA adapters and head "
            f"{lora / 2**20:.2f} MiB ({100 * lora / full:.2f}% of it).")


def print_text_table(results: dict[str, dict[str, Any]]) -> None:
    """Print the results table, the checkpoint sizes and the total time."""
    print("\n".join(table_rows(results)))
    for line in (checkpoint_line(results), f"total: {results.get('total', {}).get('seconds', 0):.1f} s"):
        if line:
            print(line)


def plot_accuracy_vs_trainable(results: dict[str, dict[str, Any]], path: Path) -> bool:
    """Test accuracy against trainable parameters (log scale), one marker per method; the majority class as a line.

    Returns False without matplotlib.
    """
    plt = pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(10, 4.5))
    markers = "osD^v<>phX*"
    for index, (name, r) in enumerate((n, r) for n, r in results.items() if r.get("trainable")):
        ax.scatter(r["trainable"], 100 * r["accuracy"], marker=markers[index % len(markers)], s=45,
                   color="#c07030" if name in STUDENTS else "#4878a8", label=_label(name, r))
    if "majority" in results:
        ax.axhline(100 * results["majority"]["accuracy"], color="#999999", linestyle="--", label=LABELS["majority"])
    ax.set(xscale="log", xlabel="trainable parameters", ylabel="test accuracy (%)",
           title="Accuracy against trainable parameters (blue: the transformer, orange: the student)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return True


def write_text_report(out: Path, job: Any, results: dict[str, dict[str, Any]], curves: dict[str, list[dict[str, Any]]],
                      command: str) -> None:
    """Write ``results.json``, ``report.md`` and the plots into ``out``."""
    with atomic_path(out / "results.json") as tmp:
        tmp.write_text(json.dumps(results, indent=2))
    teachers = {k: v for k, v in curves.items() if k in ("full", "lora", "lora_proximal")}
    students = {k: v for k, v in curves.items() if k in STUDENTS}
    plots = [(caption, name) for caption, name, made in (
        ("Accuracy against trainable parameters", "accuracy_vs_trainable.png",
         plot_accuracy_vs_trainable(results, out / "accuracy_vs_trainable.png")),
        ("Learning curves: fine-tuning", "finetune_curves.png",  # none without a fine-tuned method: no empty plot
         bool(teachers) and plot_curves(teachers, out / "finetune_curves.png", "Fine-tuning: validation accuracy", LABELS)),
        ("Learning curves: the students", "distill_curves.png",
         plot_curves(students, out / "distill_curves.png", "Students: validation accuracy", LABELS)),
    ) if made]
    lines = ["# warmstart run report (text)", "", _story(to_dict(job), results), "", *table_rows(results), "",
             checkpoint_line(results), "",
             f"Total time: {results.get('total', {}).get('seconds', 0):.1f} s. The full config is `job.yaml`; run it "
             f"again with `{command}`. Each method's checkpoints and metrics.csv are in its sub-folder.", ""]
    write_markdown(out, lines, plots)


def _story(cfg: dict[str, Any], results: dict[str, dict[str, Any]]) -> str:
    data, distill = cfg["data"], cfg["distill"]
    teacher = next((r["teacher"] for r in results.values() if "teacher" in r), None)
    text = (f"`{cfg['model']}` fine-tuned on the VADER lexicon's {data['task']} task (split seed {data['split_seed']}, "
            f"{100 * data['val_fraction']:.0f}% validation, {100 * data['test_fraction']:.0f}% test) by each method, "
            f"with the labels of {100 * data['labelled']:.0f}% of the training words; the other training words are "
            "unlabelled. Choices use the validation split; test accuracy is measured once per model. LoRA: "
            f"r={cfg['lora']['r']}, alpha={cfg['lora']['alpha']}, targets {cfg['lora']['targets']}.")
    if teacher is not None:
        text += (f" The {LABELS.get(teacher, teacher)} model (best validation accuracy) teaches a character n-gram "
                 f"student ({distill['buckets']} buckets x {distill['dim']} dimensions) on its probabilities for the "
                 "labelled and the unlabelled words (T = " + f"{distill['temperature']:g}); the same student is also "
                 "trained on the hard labels and on the raters' label distributions, with the same settings.")
    gains = student_gains(results, "student_teacher", "student_hard",
                          subject="The student distilled on the labelled + unlabelled words")
    return f"{text} {gains}" if gains else text
