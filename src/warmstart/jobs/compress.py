"""``warmstart compress``: prune a trained model, recover it by distillation, quantize it, and compare sizes and speed."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from warmstart._run_dir import check_out_dir, job_lock
from warmstart.checkpoint import atomic_path
from warmstart.config import save_config
from warmstart.data import InMemoryLoader
from warmstart.errors import ConfigError, nearest
from warmstart.evaluation import evaluate
from warmstart.finetune import load_pretrained
from warmstart.jobs.data import DataBundle, build_data
from warmstart.jobs.schema import CompressJob, ModelConfig
from warmstart.jobs.stages import build_job_model, recorded_job, resolve_seed


@dataclasses.dataclass
class _Row:
    name: str
    model: nn.Module
    accuracy: float
    params: int
    bytes: int
    latency_ms: float


def run_compress(job: CompressJob, progress: bool = True) -> dict[str, dict[str, Any]]:
    """Prune, recover (by distillation, and by fine-tuning for comparison), quantize; write the comparison.

    With ``job.export`` (the default) the quantized model is also written as ``model.pt2`` and the
    pruned, distilled float model as ``model.onnx`` (``deploy`` extra), each timed after loading
    in a fresh process without warmstart: ``results["exported"]`` and the report's last table.

    The whole job is checked before anything is written or trained: the model names and their
    arguments here, the other settings by :class:`CompressJob` itself.

    Raises:
        ConfigError: an unknown model name (the nearest of warmstart's and torchvision's models is
            named), an argument its builder does not take, or a weights file that does not exist yet
            (it names the command that writes it).
        RunExistsError: ``out_dir`` holds an earlier run and ``trainer.overwrite`` is False (``--overwrite``).
    """
    from warmstart.compress import convert_qat, count_parameters, measure_latency, prepare_qat, prune, quantize, \
        recover, save_compressed, tensor_bytes  # the compress extra: torch-pruning and torchao load on first use

    for key, model_config in (("model", job.model), ("student", job.student)):
        if model_config is not None:
            _check_model_config(model_config, key)
    for path in (job.weights, job.student_weights if job.student is not None else None):
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"'{path}' does not exist: train it first (warmstart run configs/digits_transfer.yaml "
                              "writes the fine-tuned model and the student), or point the config to your weights")
    seed, out = resolve_seed(job), check_out_dir(job.out_dir)
    reads = [path for path in (job.weights, job.student_weights) if path is not None]
    with job_lock(out, job.trainer.overwrite, keep=reads):
        save_config(recorded_job(job), out / "job.yaml")
        data = build_data(job.data, seed)
        example = next(iter(data.test))[0][: job.latency_batch]
        model = build_job_model(job.model, data, seed)
        load_pretrained(model, job.weights)
        rows: list[_Row] = []

        def measure(name: str, net: nn.Module, params: int | None = None) -> _Row:
            # an int8 graph holds its weights as int8 buffers (only its float biases are parameters, frozen):
            # it is given its float model's count
            row = _Row(name, net, _accuracy(net, data), params or count_parameters(net), tensor_bytes(net),
                       1e3 * measure_latency(net, example))  # seconds -> ms
            rows.append(row)
            if progress:
                print(f"[warmstart compress] {name}: test accuracy {100 * row.accuracy:.1f}%, {row.params:,} parameters, "
                      f"{row.bytes / 1e3:.1f} kB, {row.latency_ms:.2f} ms per batch of {len(example)}", flush=True)
            return row

        started = time.perf_counter()
        measure("trained model", model)
        options = _recovery_options(job, progress)
        transfer = InMemoryLoader(data.pool, None, batch_size=job.data.batch_size, shuffle=True, seed=seed,
                                  transform=data.train.transform)

        def distil(net: nn.Module, epochs: int, teacher: nn.Module = model, **changes: Any) -> None:
            # the teacher (the unpruned model, by default) labels every training image
            recover(net, transfer, teacher=teacher, method="distill", temperature=job.temperature, alpha=1.0,
                    **{**options, "epochs": epochs, **changes})

        between = max(1, job.trainer.epochs // job.steps)
        pruned, report = prune(model, example[:2], ratio=job.ratio, importance=job.importance, steps=job.steps,
                               global_pruning=job.global_pruning, recover_fn=lambda net, step: distil(net, between))
        measure(f"pruned {report.achieved_ratio:.0%}, before recovery", copy.deepcopy(pruned))
        finetuned = copy.deepcopy(pruned)
        recover(finetuned, data.train, method="finetune", **options)
        measure("pruned + fine-tuning on the labels", finetuned)
        same_steps = max(1, round(options["epochs"] * len(transfer) / len(data.train)))
        if same_steps != options["epochs"]:  # distillation's epochs run over more images: its fair control
            finetuned = copy.deepcopy(pruned)
            recover(finetuned, data.train, method="finetune", **{**options, "epochs": same_steps})
            measure(f"pruned + fine-tuning on the labels, as many optimizer steps ({same_steps} epochs)", finetuned)
        distil(pruned, options["epochs"])
        distilled = measure("pruned + distillation from the trained model", pruned)
        calibration = [(x,) for x, *_ in data.train.clone(transform=None, shuffle=False)]
        quantized, q_report = quantize(distilled.model, job.quantize, example, calibration=calibration)
        chosen = measure(f"pruned + distilled + {q_report.mode}", quantized, distilled.params)
        if job.qat_epochs:
            qat = prepare_qat(distilled.model, example)
            # the teacher is the float model being quantized: int8 learns to compute what it computes
            distil(qat, job.qat_epochs, distilled.model, optimizer=dataclasses.replace(job.optimizer, lr=job.qat_lr))
            measure("pruned + distilled + quantization-aware training, int8-static", convert_qat(qat, example)[0],
                    distilled.params)
        if job.student is not None:
            student = build_job_model(job.student, data, seed)
            load_pretrained(student, job.student_weights)
            measure("distilled student (warmstart run)", student)
        save_compressed(distilled.model, out / "pruned_distilled.safetensors")
        exported = _export_files(out, chosen, distilled, example, progress) if job.export else {}
        results = {row.name: {"accuracy": round(row.accuracy, 6), "params": row.params, "bytes": row.bytes,
                              "latency_ms": round(row.latency_ms, 3)} for row in rows}
        results["total"] = {"seconds": round(time.perf_counter() - started, 1), "quantize_note": q_report.note,
                            "pruned_ratio": round(report.achieved_ratio, 4)}
        if exported:
            results["exported"] = exported
        _write(out, job, results)
    return results


def _export_files(out: Path, chosen: _Row, float_row: _Row, example: torch.Tensor,
                  progress: bool) -> dict[str, dict[str, Any]]:
    """Write model.pt2 (the chosen model) and model.onnx (the pruned, distilled float model); time them afresh.

    Each file is loaded in one fresh process without warmstart (:func:`run_in_fresh_process`) and
    run on the latency batch: its median latency, and how far its outputs are from the eager
    model's, go beside the eager latency measured here.
    """
    from warmstart.compress import export, run_in_fresh_process

    files, notes = {}, {}
    attempts = [("model.pt2", chosen, "pt2"), ("model.pt2", float_row, "pt2"), ("model.onnx", float_row, "onnx")]
    for name, row, kind in attempts:
        if name in files or (name in notes and row is chosen):
            continue
        try:
            files[name] = (row, export(row.model, example, out / name, format=kind))
        except ConfigError as err:  # int8-dynamic-eager or a forward export cannot capture; no deploy extra
            notes[name] = f"{row.name}: not exported ({err})" + ("; trying the float model" if row is chosen else "")
    try:
        runs = run_in_fresh_process([path for _, path in files.values()], [example]) if files else {}
    except ConfigError as err:  # the files are written; only their timing failed: say so in the report
        return {name: {"note": f"written, but not timed in a fresh process: {err}"} for name in files} | {
            name: {"note": note} for name, note in notes.items()}
    exported: dict[str, dict[str, Any]] = {}
    for name, (row, path) in files.items():
        run = runs[str(path.resolve())]
        with torch.no_grad():
            eager = row.model.eval()(example)
        exported[name] = {"model": row.name, "bytes": path.stat().st_size, "latency_ms": round(run.latency_ms, 3),
                          "eager_latency_ms": round(row.latency_ms, 3),
                          "max_abs_difference": float((run.outputs[0] - eager).abs().max()),
                          "same_predictions": float((run.outputs[0].argmax(1) == eager.argmax(1)).float().mean())}
        if progress:
            print(f"[warmstart compress] {name} ({row.name}): {path.stat().st_size / 1e3:.1f} kB, "
                  f"{run.latency_ms:.2f} ms per batch of {len(example)} in a fresh process "
                  f"(eager {row.latency_ms:.2f} ms)", flush=True)
    for name, note in notes.items():
        exported.setdefault(name, {})["note"] = note
    return exported


def _check_model_config(config: ModelConfig, key: str) -> None:
    """Refuse an unknown model name (warmstart's models suggested as well as torchvision's) or argument, up front."""
    from warmstart.models import MODELS

    builder = MODELS.get(config.name)
    if builder is None:
        from torchvision.models import list_models

        if config.name not in list_models():
            known = [*MODELS, *sorted(list_models())]
            raise ConfigError(f"{key}.name: unknown model '{config.name}'{nearest(config.name, known)}; warmstart's "
                              f"models are {', '.join(MODELS)}, and any torchvision model name works "
                              "(torchvision.models.list_models())")
        return
    accepted = inspect.signature(builder).parameters
    unknown = [name for name in config.args if name not in accepted]
    if unknown:
        raise ConfigError(f"{key}.args: model '{config.name}' takes no argument "
                          f"{', '.join(repr(name) + nearest(name, accepted) for name in unknown)}; its arguments are: "
                          f"{', '.join(accepted)}")


def _recovery_options(job: CompressJob, progress: bool) -> dict[str, Any]:
    trainer = dataclasses.replace(job.trainer, progress=job.trainer.progress and progress)
    return {"epochs": trainer.epochs, "optimizer": job.optimizer, "config": trainer, "scheduler": job.scheduler}


def _accuracy(model: nn.Module, data: DataBundle) -> float:
    """Test accuracy in eval mode (also of a compiled int8 graph, which a Trainer cannot hold)."""
    return evaluate(model, data.test)["accuracy"]


def _exported_lines(exported: dict[str, dict[str, Any]], batch: int) -> list[str]:
    if not exported:
        return []
    lines = ["## Deployable files", "",
             f"Each file loaded in a fresh process that cannot import warmstart (`python -I -S`) and timed there; "
             f"median ms per batch of {batch} on the CPU, beside the same model run eagerly in this process.", "",
             "| file | model | size (kB) | latency, fresh process (ms) | latency, eager (ms) | max abs difference | "
             "same predictions |", "|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {name} | {e['model']} | {e['bytes'] / 1e3:.1f} | {e['latency_ms']:.2f} | {e['eager_latency_ms']:.2f} "
              f"| {e['max_abs_difference']:.2g} | {100 * e['same_predictions']:.1f}% |"
              for name, e in exported.items() if "bytes" in e]
    lines += ["", *[f"- {name}: {e['note']}" for name, e in exported.items() if "note" in e],
              "Load `model.pt2` with `torch.export.load('model.pt2').module()` (for an int8 model, `import torchao` "
              "first: it registers the int8 operators); `model.onnx` with "
              "`onnxruntime.InferenceSession('model.onnx')`. An int8-static `model.pt2` runs torch's reference int8 "
              "operators as loaded; `torch.compile` it with `torch._inductor.config.freezing` on for the fused "
              "kernels (bench/RESULTS.md, export latency).", ""]
    return lines


def _write(out: Path, job: CompressJob, results: dict[str, dict[str, Any]]) -> None:
    import json

    from warmstart.jobs.report import pyplot, save_figure

    with atomic_path(out / "results.json") as tmp:
        tmp.write_text(json.dumps(results, indent=2))
    rows = {k: v for k, v in results.items() if "accuracy" in v}
    lines = ["# warmstart compress report", "",
             f"`{job.model.name}` {job.model.args} from `{job.weights}`, pruned to {1 - job.ratio:.0%} of its "
             f"parameters, recovered for {job.trainer.epochs} epochs, quantized ({job.quantize}). Accuracy on the "
             f"test split of `{job.data.name}`; latency: median ms per batch of {job.latency_batch} on the CPU.", "",
             "| model | test accuracy (%) | parameters | size (kB) | latency (ms) |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {name} | {100 * r['accuracy']:.1f} | {r['params']:,} | {r['bytes'] / 1e3:.1f} | {r['latency_ms']:.2f} |"
              for name, r in rows.items()]
    lines += ["", results["total"]["quantize_note"], ""]
    lines += _exported_lines(results.get("exported", {}), job.latency_batch)
    plt = pyplot()
    if plt is not None:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, key, label in ((axes[0], "bytes", "size (kB)"), (axes[1], "latency_ms", "latency (ms per batch)")):
            for name, r in rows.items():
                ax.scatter(r[key] / (1e3 if key == "bytes" else 1), 100 * r["accuracy"], label=name)
            ax.set(xlabel=label, ylabel="test accuracy (%)")
            ax.grid(alpha=0.3)
        axes[1].legend(fontsize=7)
        fig.suptitle("Accuracy against size and CPU latency")
        fig.tight_layout()
        save_figure(fig, out / "tradeoff.png")
        plt.close(fig)
        lines += ["![Accuracy against size and CPU latency](tradeoff.png)", ""]
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text("\n".join(lines))
