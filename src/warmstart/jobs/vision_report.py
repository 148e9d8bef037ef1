"""What the vision pipeline leaves for a person: two tables, results.json, report.md, and three plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from warmstart.checkpoint import atomic_path
from warmstart.config import to_dict
from warmstart.jobs.report import plot_curves, pyplot, save_figure, write_markdown

LABELS = {
    "linear_probe": "linear probe (frozen pooled features)",
    "full": "full fine-tune",
    "lora": "LoRA (frozen network, adapters on its convolutions)",
    "recipe": "fine_tune() recipe",
    "student_distilled": "small CNN distilled from the teacher, labelled + unlabelled images",
    "student_hard": "small CNN on the labelled images alone, as many optimizer steps (control)",
}
LABELS.update({f"{name}_random": f"{label}, random weights" for name, label in list(LABELS.items())[:4]})


def _percent(mean: float, sd: float | None) -> str:
    return f"{100 * mean:.1f}" + ("" if sd is None else f" ± {100 * sd:.1f}")


def transfer_rows(results: dict[str, Any]) -> list[str]:
    """Markdown rows: each method from ImageNet weights beside its random-weight control, the gain and its wins."""
    methods, gains = results["methods"], results["gains"]
    rows = ["| method | ImageNet weights: test accuracy (%) | random weights: test accuracy (%) | gain (points) | "
            "wins | trainable parameters | seconds per run |", "|---|---:|---:|---:|---:|---:|---:|"]
    for method, gain in gains.items():
        pre, rnd = methods[method], methods[f"{method}_random"]
        rows.append(f"| {LABELS[method]} | {_percent(pre['accuracy'], pre['accuracy_sd'])} | "
                    f"{_percent(rnd['accuracy'], rnd['accuracy_sd'])} | {_percent(gain['mean'], gain['sd'])} | "
                    f"{gain['wins']}/{gain['seeds']} | {pre['trainable']:,} | {pre['seconds']:.1f} |")
    return rows


def compression_rows(results: dict[str, Any]) -> list[str]:
    """Markdown rows: accuracy, parameters, size and latency of the fine-tuned, pruned, int8 networks and the students."""
    rows = ["| model | test accuracy (%) | parameters | size (MB) | latency (ms per batch) |", "|---|---:|---:|---:|---:|"]
    for name, r in results["compression"].items():
        if name.startswith("_"):
            continue
        rows.append(f"| {name} | {100 * r['accuracy']:.1f} | {r['params']:,} | {r['bytes'] / 1e6:.2f} | "
                    f"{r['latency_ms']:.1f} |")
    if len(rows) == 2:  # no compression stage: the students alone
        for name in ("student_distilled", "student_hard"):
            if name in results["methods"]:
                r = results["methods"][name]
                rows.append(f"| {LABELS[name]} | {_percent(r['accuracy'], r['accuracy_sd'])} | {r['params']:,} | - | - |")
    return rows


def distillation_line(results: dict[str, Any]) -> str:
    """One sentence: the distilled student against its same-steps control, mean ± sd over seeds and wins."""
    methods, gain = results["methods"], results.get("distillation")
    if not gain or "student_distilled" not in methods:
        return ""
    student, control = methods["student_distilled"], methods["student_hard"]
    spread = f"over {gain['seeds']} seeds" if gain["seeds"] > 1 else "one seed, no spread measured"
    return (f"Distilled student {_percent(student['accuracy'], student['accuracy_sd'])}% against its control (the labels "
            f"alone, as many steps) {_percent(control['accuracy'], control['accuracy_sd'])}%: "
            f"{'+' if gain['mean'] >= 0 else ''}{_percent(gain['mean'], gain['sd'])} points, ahead on "
            f"{gain['wins']}/{gain['seeds']} seeds ({spread}).")


def print_vision_table(results: dict[str, Any]) -> None:
    """Print both tables and the total time."""
    print("\n".join([*transfer_rows(results), "", *compression_rows(results), "", distillation_line(results)]))
    print(f"total: {results['total']['seconds']:.1f} s ({_threads(results)})")


def _threads(results: dict[str, Any]) -> str:
    count = results["total"]["threads"]
    return f"{count} torch thread" + ("" if count == 1 else "s")


def plot_transfer(results: dict[str, Any], path: Path) -> bool:
    """Bars of test accuracy per method, ImageNet weights beside random weights, with the sd over seeds."""
    plt = pyplot()
    if plt is None:
        return False
    methods, names = results["methods"], list(results["gains"])
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for offset, suffix, colour, label in ((-0.2, "", "#4878a8", "ImageNet weights"),
                                          (0.2, "_random", "#999999", "random weights")):
        rows = [methods[name + suffix] for name in names]
        ax.bar([i + offset for i in range(len(names))], [100 * r["accuracy"] for r in rows], width=0.4, color=colour,
               yerr=[100 * (r["accuracy_sd"] or 0) for r in rows], capsize=3, label=label)
    ax.set_xticks(range(len(names)), [LABELS[name].split(" (")[0] for name in names])
    ax.set(ylabel="test accuracy (%)", ylim=(0, 100), title=f"Animal shapes, {len(results['seeds'])} seed(s)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return True


def plot_tradeoff(compression: dict[str, Any], path: Path) -> bool:
    """Test accuracy against size and against CPU latency, one marker per model."""
    plt = pyplot()
    if plt is None:
        return False
    rows = {k: v for k, v in compression.items() if not k.startswith("_")}
    fig, axes = plt.subplots(1, 2, figsize=(14, 4))
    for ax, key, scale, label in ((axes[0], "bytes", 1e6, "size (MB)"), (axes[1], "latency_ms", 1, "latency (ms)")):
        for name, r in rows.items():
            ax.scatter(r[key] / scale, 100 * r["accuracy"], label=name)
        ax.set(xscale="log", xlabel=label, ylabel="test accuracy (%)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: the points stay visible
    fig.suptitle("Accuracy against size and CPU latency")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return True


def write_vision_report(out: Path, job: Any, results: dict[str, Any], curves: dict[str, list[dict[str, Any]]],
                        command: str) -> None:
    """Write ``results.json``, ``report.md`` and the plots into ``out``."""
    with atomic_path(out / "results.json") as tmp:
        tmp.write_text(json.dumps(results, indent=2))
    finetuned = {k: v for k, v in curves.items() if not k.startswith(("linear_probe", "student"))}
    students = {k: v for k, v in curves.items() if k.startswith("student")}
    plots = [(caption, name) for caption, name, made in (
        ("Test accuracy: ImageNet weights against random weights", "transfer.png",
         plot_transfer(results, out / "transfer.png")),
        ("Learning curves: fine-tuning (first seed)", "finetune_curves.png",
         bool(finetuned) and plot_curves(finetuned, out / "finetune_curves.png", "Validation accuracy", LABELS)),
        ("Learning curves: the students", "distill_curves.png",
         bool(students) and plot_curves(students, out / "distill_curves.png", "Students: validation accuracy", LABELS)),
        ("Accuracy against size and latency", "tradeoff.png",
         bool(results["compression"]) and plot_tradeoff(results["compression"], out / "tradeoff.png")),
    ) if made]
    lines = ["# warmstart run report (vision)", "", _story(to_dict(job), results), "", *transfer_rows(results), "",
             "## Distilled and compressed", "", _compression_story(results), "", distillation_line(results), "",
             *compression_rows(results), "",
             f"Total time: {results['total']['seconds']:.1f} s with {_threads(results)}. The "
             f"full config is `job.yaml`; run it again with `{command}`. With trainer.checkpoint, each method's "
             "checkpoints are in its sub-folder (seed*/<method>).", ""]
    write_markdown(out, lines, plots)


def _story(cfg: dict[str, Any], results: dict[str, Any]) -> str:
    data, seeds = cfg["data"], results["seeds"]
    spread = (f"mean ± sd over {len(seeds)} seeds ({', '.join(map(str, seeds))}); wins: seeds where the ImageNet "
              "weights beat the random weights" if len(seeds) > 1 else
              f"one seed ({seeds[0]}): no spread is measured, so a gain here is one draw (set seeds: [0, 1, 2] for "
              "mean ± sd and win counts)")
    return (f"`{cfg['model']}` with its ImageNet weights, and the same architecture with timm's default random "
            f"initialisation (the control), fine-tuned on `{data['name']}` (10 animal silhouettes) with "
            f"{data['shots']} labelled images per class at {data['size']} px, by each method with the same settings. "
            f"Choices use {data['val_per_class']} validation images per class; test accuracy on "
            f"{data['test'] or 'all'} test images, measured once per model. Accuracy: {spread}. LoRA: "
            f"r={cfg['lora']['r']}, alpha={cfg['lora']['alpha']:g}, targets {cfg['lora']['targets']}.")


def _compression_story(results: dict[str, Any]) -> str:
    student = results["methods"].get("student_distilled", {})
    text = ""
    if student:
        text = (f"The {LABELS.get(student['teacher'], student['teacher'])} network (best validation accuracy, first "
                f"seed) labels {student['images']:,} training images (labelled and unlabelled) with its probabilities; "
                f"a small CNN learns from them at 28 px for {student['steps']} optimizer steps, beside the same CNN on "
                f"the labelled images alone for as many steps, once per seed (the teacher stays the first seed's); "
                f"the table gives the first seed's students.")
    note = results["compression"].get("_note")
    if note:
        text += (f" The {LABELS.get(note['network'], note['network'])} network is pruned by "
                 f"{100 * note['pruned_ratio']:.0f}% of its parameters (whole channels), distilled from itself, and "
                 f"quantized; latency is the median CPU time of one batch of {note['latency_batch']} (the networks at "
                 "their input size, the students at 28 px), measured on a shared machine. " + note["quantize_note"])
    return text
