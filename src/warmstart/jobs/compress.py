"""``warmstart compress``: prune a trained model, recover it by distillation, quantize it, and compare sizes and speed."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

from torch import nn

from warmstart.data import InMemoryLoader, build_data
from warmstart.errors import ConfigError
from warmstart.finetune import load_pretrained
from warmstart.jobs.runner import JobRun, run_job
from warmstart.jobs.schema import CompressJob
from warmstart.jobs.stages import build_job_model, resolve_seed
from warmstart.models import check_model_args


def run_compress(job: CompressJob, progress: bool = True) -> dict[str, Any]:
    """Prune, recover (by distillation, and by fine-tuning for comparison), quantize; write the comparison.

    Returns ``results.json`` (see :func:`warmstart.jobs.runner.run_job`): its ``compression`` rows, and with
    ``job.export`` (the default) ``exported``: the quantized model written as ``model.pt2`` and the
    pruned, distilled float model as ``model.onnx`` (``deploy`` extra), each timed after loading in a
    fresh process without warmstart. The whole job is checked before anything is written or trained.

    Raises:
        ConfigError: an unknown model name (the nearest of warmstart's and torchvision's models is
            named), an argument its builder does not take, or a weights file that does not exist yet
            (it names the command that writes it).
        RunExistsError: ``out_dir`` holds an earlier run and ``trainer.overwrite`` is False (``--overwrite``).
    """
    for key, model_config in (("model", job.model), ("student", job.student)):
        if model_config is not None:
            check_model_args(model_config.name, model_config.args, key)
    reads = [path for path in (job.weights, job.student_weights if job.student is not None else None) if path]
    for path in reads:
        if not Path(path).is_file():
            raise ConfigError(f"'{path}' does not exist: train it first (warmstart run configs/digits_transfer.yaml "
                              "writes the fine-tuned model and the student), or point the config to your weights")
    data = build_data(job.data, resolve_seed(job))
    story = (f"`{job.model.name}` {job.model.args} from `{job.weights}`, pruned by {job.ratio:.0%} of its parameters, "
             f"recovered for {job.trainer.epochs} epochs, quantized ({job.quantize}). Accuracy on the test split of "
             f"`{job.data.name}`; latency: the median CPU time of one batch.")
    return run_job(job, [], data=data, test=data.test, val=data.val, title="warmstart compress report", story=story,
                   progress=progress, compress=_compress, keep=reads, command="compress")


def _compress(run: JobRun) -> None:
    from warmstart.compress import convert_qat, prepare_qat, prune, quantize, recover, save_compressed

    job, data, seed = run.job, run.data, run.seeds[0]
    example = next(iter(data.test))[0][: job.latency_batch]
    model = build_job_model(job.model, data, seed)
    load_pretrained(model, job.weights)
    run.measure("trained model", model, data.test, example)
    trainer = dataclasses.replace(job.trainer, progress=job.trainer.progress and run.progress)
    options = {"epochs": trainer.epochs, "optimizer": job.optimizer, "config": trainer, "scheduler": job.scheduler}
    transfer = InMemoryLoader(data.pool, None, batch_size=job.data.batch_size, shuffle=True, seed=seed,
                              transform=data.train.transform)

    def distil(net: nn.Module, epochs: int, teacher: nn.Module = model, **changes: Any) -> None:
        # the teacher (the unpruned model, by default) labels every training image
        recover(net, transfer, teacher=teacher, method="distill", temperature=job.temperature, alpha=1.0,
                **{**options, "epochs": epochs, **changes})

    between = max(1, job.trainer.epochs // job.steps)
    pruned, report = prune(model, example[:2], ratio=job.ratio, importance=job.importance, steps=job.steps,
                           global_pruning=job.global_pruning, recover_fn=lambda net, step: distil(net, between))
    run.measure(f"pruned {report.achieved_ratio:.0%}, before recovery", copy.deepcopy(pruned), data.test, example)
    same_steps = max(1, round(options["epochs"] * len(transfer) / len(data.train)))
    for epochs in dict.fromkeys((options["epochs"], same_steps)):  # distillation's epochs run over more images
        finetuned = copy.deepcopy(pruned)
        recover(finetuned, data.train, method="finetune", **{**options, "epochs": epochs})
        run.measure("pruned + fine-tuning on the labels" + (f", as many optimizer steps ({epochs} epochs)"
                                                            if epochs != options["epochs"] else ""),
                    finetuned, data.test, example)
    distil(pruned, options["epochs"])
    params = run.measure("pruned + distillation from the trained model", pruned, data.test, example)["params"]
    calibration = [(x,) for x, *_ in data.train.clone(transform=None, shuffle=False)]
    quantized, q_report = quantize(pruned, job.quantize, example, calibration=calibration)
    chosen = f"pruned + distilled + {q_report.mode}"
    run.measure(chosen, quantized, data.test, example, params)
    if job.qat_epochs:
        qat = prepare_qat(pruned, example)
        # the teacher is the float model being quantized: int8 learns to compute what it computes
        distil(qat, job.qat_epochs, pruned, optimizer=dataclasses.replace(job.optimizer, lr=job.qat_lr))
        run.measure("pruned + distilled + quantization-aware training, int8-static", convert_qat(qat, example)[0],
                    data.test, example, params)
    if job.student is not None:
        student = build_job_model(job.student, data, seed)
        load_pretrained(student, job.student_weights)
        run.measure("distilled student (warmstart run)", student, data.test, example)
    save_compressed(pruned, run.out / "pruned_distilled.safetensors")
    run.notes.append(q_report.note)
    if job.export:
        from warmstart.compress import export_for_serving

        run.exported = export_for_serving({chosen: quantized, "pruned + distillation from the trained model": pruned},
                                          example, run.out, eager_latency_ms={label: row["latency_ms"] for label, row
                                                                              in run.compression.items()})
        for name, row in run.exported.items():
            if "bytes" in row:
                print(f"[warmstart compress] {name} ({row['model']}): {row['bytes'] / 1e3:.1f} kB, "
                      f"{row['latency_ms']:.2f} ms per batch of {len(example)} in a fresh process", flush=True)
