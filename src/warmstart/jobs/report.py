"""What every job leaves for a person: a printed table, results.json, curves.json, report.md and PNG plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from warmstart.checkpoint import atomic_path


def _percent(mean: float, sd: float | None = None) -> str:
    return f"{100 * mean:.1f}" + ("" if sd is None else f" ± {100 * sd:.1f}")


# facts some jobs measure, shown as a column when a row has them: key, header, format
COLUMNS = (("memory_mb", "memory added (MB)", lambda v: f"{v:,.0f}"),
           ("checkpoint_bytes", "weights file (MB)", lambda v: f"{v / 2**20:.2f}"))


def methods_table(results: dict[str, Any]) -> list[str]:
    """Markdown rows: each method's test accuracy (mean ± sd over the seeds), its gain over its control and the
    seeds it wins, validation accuracy, parameters and seconds (and the :data:`COLUMNS` the job measured)."""
    methods, gains = results["methods"], results["gains"]
    if not methods:
        return []
    extra = [column for column in COLUMNS if any(column[0] in r for r in methods.values())]
    rows = ["| method | test accuracy (%) | against its control (points, seeds ahead) | validation (%) | trainable "
            "parameters | parameters | seconds |" + "".join(f" {header} |" for _, header, _ in extra),
            "|---|---:|---|---:|---:|---:|---:|" + "---:|" * len(extra)]
    for name, r in methods.items():
        gain = gains.get(name)
        against = "" if gain is None else (
            f"{'+' if gain['mean'] >= 0 else ''}{_percent(gain['mean'], gain['sd'])} vs "
            f"{methods[gain['control']]['label']} ({gain['wins']}/{gain['seeds']})")
        val = _percent(r["val_accuracy"]) if "val_accuracy" in r else "-"
        label = r["label"] + (f" (chose {r['choice']})" if "choice" in r else "")
        rows.append(f"| {label} | {_percent(r['accuracy'], r['accuracy_sd'])} | {against} | {val} | "
                    f"{r['trainable']:,} | {r['params']:,} | {r['seconds']:.1f} |"
                    + "".join(f" {shown(r[key]) if key in r else '-'} |" for key, _, shown in extra))
    return rows


def compression_table(results: dict[str, Any]) -> list[str]:
    """Markdown rows of the measured networks: accuracy, parameters, size and CPU latency."""
    rows = results["compression"]
    if not rows:
        return []
    return ["| model | test accuracy (%) | parameters | size (MB) | latency (ms per batch) |",
            "|---|---:|---:|---:|---:|",
            *(f"| {name} | {_percent(r['accuracy'])} | {r['params']:,} | {r['bytes'] / 1e6:.3f} | "
              f"{r['latency_ms']:.2f} (batch of {r['batch']}) |" for name, r in rows.items())]


def exported_table(results: dict[str, Any]) -> list[str]:
    """Markdown rows of the files written for serving, each timed in a fresh process without warmstart."""
    exported = results["exported"]
    if not exported:
        return []
    lines = ["## Files for serving", "",
             "Each file was loaded in a fresh process that cannot import warmstart (`python -I -S`) and timed there, "
             "beside the same model run eagerly in this process.", "",
             "| file | model | size (kB) | latency, fresh process (ms) | latency, eager (ms) | max abs difference | "
             "same predictions |", "|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {name} | {e['model']} | {e['bytes'] / 1e3:.1f} | {e['latency_ms']:.2f} | {e['eager_latency_ms']:.2f} "
              f"| {e['max_abs_difference']:.2g} | {100 * e['same_predictions']:.1f}% |"
              for name, e in exported.items() if "bytes" in e]
    lines += ["", *[f"- {name}: {e['note']}" for name, e in exported.items() if "note" in e],
              "Load `model.pt2` with `torch.export.load('model.pt2').module()` (for int8, `import torchao` first: it "
              "registers the int8 operators) and `model.onnx` with `onnxruntime.InferenceSession('model.onnx')`.", ""]
    return lines


def print_summary(results: dict[str, Any]) -> None:
    """Print the tables, the notes and the total time."""
    lines = [*methods_table(results), *results["notes"], "", *compression_table(results)]
    print("\n".join(line for line in lines if line is not None))
    threads = results["total"]["threads"]
    print(f"total: {results['total']['seconds']:.1f} s ({threads} torch thread{'' if threads == 1 else 's'})")


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend, or ``None`` when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _save(plt: Any, fig: Any, path: Path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def plot_curves(curves: dict[str, list[dict[str, Any]]], labels: dict[str, str], path: Path, title: str) -> bool:
    """Validation accuracy per epoch, one line per method; False without matplotlib or curves."""
    plt = pyplot()
    lines = {name: [100 * h["val_accuracy"] for h in history if "val_accuracy" in h] for name, history in curves.items()}
    lines = {name: points for name, points in lines.items() if points}
    if plt is None or not lines:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, points in lines.items():
        ax.plot(range(1, len(points) + 1), points, marker="o" if len(points) < 8 else None, label=labels[name])
    ax.set(xlabel="epoch", ylabel="validation accuracy (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(plt, fig, path)
    return True


def plot_accuracy(results: dict[str, Any], path: Path, title: str) -> bool:
    """Bars of each method's test accuracy with its sd over the seeds; the controls in grey."""
    plt = pyplot()
    methods = results["methods"]
    if plt is None or not methods:
        return False
    controls = {gain["control"] for gain in results["gains"].values()}
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(methods) + 1.5))
    bars = ax.barh([r["label"] for r in methods.values()], [100 * r["accuracy"] for r in methods.values()],
                   xerr=[100 * (r["accuracy_sd"] or 0) for r in methods.values()],
                   color=["#999999" if name in controls else "#4878a8" for name in methods])
    ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel="test accuracy (%)", xlim=(0, 100), title=title)
    _save(plt, fig, path)
    return True


def plot_tradeoff(results: dict[str, Any], path: Path) -> bool:
    """Test accuracy against size and against CPU latency, one marker per measured network."""
    plt = pyplot()
    rows = results["compression"]
    if plt is None or not rows:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(14, 4))
    for ax, key, scale, label in ((axes[0], "bytes", 1e6, "size (MB)"), (axes[1], "latency_ms", 1, "latency (ms)")):
        for name, r in rows.items():
            ax.scatter(r[key] / scale, 100 * r["accuracy"], label=name)
        ax.set(xscale="log", xlabel=label, ylabel="test accuracy (%)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle("Accuracy against size and CPU latency")
    _save(plt, fig, path)
    return True


def write(out: Path, results: dict[str, Any], curves: dict[str, list[dict[str, Any]]], *, title: str, story: str,
          command: str) -> None:
    """Write ``results.json``, ``curves.json``, ``report.md`` and the plots into ``out``."""
    for name, data in (("results.json", results), ("curves.json", curves)):
        with atomic_path(out / name) as tmp:
            tmp.write_text(json.dumps(data, indent=2))
    labels = {name: r["label"] for name, r in results["methods"].items()}
    students = {n for n in curves if n.startswith("student")}
    plots = [(caption, name) for caption, name, made in (
        ("Test accuracy by method (grey: the controls)", "accuracy.png",
         plot_accuracy(results, out / "accuracy.png", title)),
        ("Validation accuracy per epoch (first seed)", "curves.png",
         plot_curves({n: c for n, c in curves.items() if n not in students and n in labels}, labels,
                     out / "curves.png", "Validation accuracy")),
        ("The students: validation accuracy per epoch", "student_curves.png",
         plot_curves({n: c for n, c in curves.items() if n in students and n in labels}, labels,
                     out / "student_curves.png", "Students: validation accuracy")),
        ("Accuracy against size and latency", "tradeoff.png", plot_tradeoff(results, out / "tradeoff.png")),
    ) if made]
    seeds = results["seeds"]
    spread = (f"Test accuracy: mean ± sd over seeds {', '.join(map(str, seeds))}; against its control: the paired "
              "difference and the seeds on which the method is ahead." if len(seeds) > 1 else
              f"One seed ({seeds[0]}): no spread is measured, so a difference here is one draw.")
    lines = [f"# {title}", "", story, "", spread, "", *methods_table(results), "", *results["notes"], "",
             *compression_table(results), "", *exported_table(results),
             f"Total time: {results['total']['seconds']:.1f} s. The full config is `job.yaml`; run it again with "
             f"`{command}`.", ""]
    for caption, name in plots:
        lines += [f"## {caption}", "", f"![{caption}]({name})", ""]
    if not plots and results["methods"]:
        lines += ["(Plots need matplotlib: pip install 'warmstart[examples]'.)", ""]
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text("\n".join(lines))
