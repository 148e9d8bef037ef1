"""``warmstart run`` with ``task: vision``: an ImageNet EfficientNet-Lite fine-tuned on few animal shapes, each method
beside its random-weight control, then distilled into a small CNN, pruned and quantized to int8.

Every method trains on the same labelled images (``data.shots`` per class); choices (the teacher) use the
validation images and test accuracy is measured once per model. The other training images are unlabelled:
the teacher labels them for the student and for the pruned network's recovery.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from warmstart.data import InMemoryLoader, animal_shapes, transfer_split
from warmstart.distill import KDSetting, distill
from warmstart.errors import ConfigError
from warmstart.finetune import FinetuneTrainer, fine_tune
from warmstart.jobs.runner import (JobRun, Method, Trained, check_lora_targets, check_stages, finetune_method, in_section,
                                   run_job)
from warmstart.jobs.schema import VisionPipelineJob
from warmstart.jobs.stages import resolve_seed
from warmstart.models import build_model, efficientnet_lite_input

LABELS = {"linear_probe": "linear probe (frozen network)", "full": "full fine-tune",
          "lora": "LoRA (adapters on the frozen network's convolutions)", "recipe": "fine_tune()"}
STAGES = {"linear_probe": "probe", "full": "finetune", "lora": "lora", "recipe": "recipe"}


@dataclasses.dataclass
class VisionData:
    """The labelled, validation, unlabelled and test images as stored (``(N, 1, 28, 28)`` in ``[0, 1]``: the student's
    input) and as the network takes them (``network``: made once by ``to_network``, not per batch)."""

    labelled: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    unlabelled: torch.Tensor
    test: tuple[torch.Tensor, torch.Tensor]
    network: dict[str, torch.Tensor]
    to_network: nn.Module
    num_classes: int

    def loader(self, part: str, batch_size: int, seed: int = 0, train: bool = False, network: bool = True) -> Any:
        """Batches of ``part`` (``labelled``, ``val``, ``test``) with their labels, as the network (or the student)
        reads them."""
        images, labels = getattr(self, part)
        return InMemoryLoader(self.network[part] if network else images, labels, batch_size=batch_size,
                              shuffle=train, seed=seed)


def run_vision_pipeline(job: VisionPipelineJob, progress: bool = True) -> dict[str, Any]:
    """Run ``job``; returns ``results.json`` (see :func:`warmstart.jobs.runner.run_job`).

    1. For each seed, each method of ``job.methods`` (``linear_probe``: the head on the frozen
       network's cached features; ``full``; ``lora``; ``recipe``: :func:`warmstart.finetune.fine_tune`)
       trains the ImageNet network, and its control (``<method>_random``) the same architecture
       from random weights.
    2. The teacher (the recipe unless another pretrained method beats it on validation beyond
       chance; first seed) teaches a small CNN at 28 px on the labelled and unlabelled images
       (:func:`warmstart.distill.distill`), beside the same CNN on the labels alone for as many
       optimizer steps, once per seed.
    3. The teacher, or the best fully fine-tuned network when the teacher is not one, is pruned,
       recovered by distillation from itself (:func:`warmstart.compress.recover`) and quantized to
       int8: accuracy, parameters, size and latency beside the students.

    Raises:
        ConfigError: bad settings (named by their section), before anything is written or trained.
        OutDirBusyError: another run holds ``out_dir``.
        RunExistsError: ``out_dir`` holds an earlier run and ``trainer.overwrite`` is False (``--overwrite``).
    """
    resolve_seed(job)
    check_vision_job(job)
    with _threads(job.threads):
        data = _vision_data(job)
        _check_model_options(job, data)
        methods = []
        for name in job.methods:
            methods += [Method(name, LABELS[name], _method(name, True), name + "_random", teacher=name != "linear_probe"),
                        Method(name + "_random", LABELS[name] + ", random weights", _method(name, False))]
        student = f"`small_cnn` {job.distill.student.args}"
        methods += [Method("student_distilled", f"{student} distilled from the teacher", _student(distilled=True),
                           "student_hard", student=True),
                    Method("student_hard", f"{student} on the labels alone, as many steps (control)",
                           _student(distilled=False), student=True)]
        cfg = job.data
        story = (f"`{job.model}` with its ImageNet weights, and the same architecture from timm's default random "
                 f"initialisation (the control), trained on `{cfg.name}` (10 animal silhouettes) with {cfg.shots} "
                 f"labelled images per class at {cfg.size} px by each method. Choices use {cfg.val_per_class} "
                 f"validation images per class; test accuracy is measured once per model on {len(data.test[1])} test "
                 f"images. The teacher labels the labelled and {len(data.unlabelled):,} unlabelled images for a small "
                 "CNN at 28 px and for the pruned network's recovery.")
        folders = [f"seed{seed}/{m.name}{phase}" for seed in (job.seeds or [job.trainer.seed]) for m in methods
                   for phase in ("", "/probe", "/full")]
        return run_job(job, methods, data=data, test=data.loader("test", cfg.eval_batch_size), val=data.loader("val", cfg.eval_batch_size),
                       title="warmstart run report (vision)", story=story, progress=progress, seeds=job.seeds,
                       default_teacher="recipe", stages=(*folders, "compress/recovery"),
                       compress=_compress if job.compress.enabled else None)


def check_vision_job(job: VisionPipelineJob) -> None:
    """Check every setting the run will use, before any data, model or step: each stage's trainer, optimizer and
    schedule (:func:`warmstart.optim.check_settings`), the LoRA options, the pruning importance, and that the
    methods can give a teacher and a network to compress.

    Raises:
        ConfigError: naming the section (``lora.trainer.precision``, ...) and the fix.
    """
    check_stages(job, [*dict.fromkeys(STAGES[m] for m in job.methods), "distill", *(("compress",) if job.compress.enabled
                                                                                     else ())])
    if job.compress.enabled:
        from warmstart.compress import IMPORTANCES  # the compress extra loads on first use

        if job.compress.importance not in IMPORTANCES:
            raise ConfigError(f"compress.importance: unknown importance '{job.compress.importance}'; valid: "
                              f"{', '.join(IMPORTANCES)}")
        if not {"full", "recipe"} & set(job.methods):
            raise ConfigError("compress prunes the fully fine-tuned network: add 'full' or 'recipe' to methods, or set "
                              "compress.enabled: false")
    if not {"full", "lora", "recipe"} & set(job.methods):
        raise ConfigError("distill: the teacher is a fine-tuned network: add 'full', 'lora' or 'recipe' to methods")
    if job.distill.student.name != "small_cnn":
        raise ConfigError(f"distill.student.name: the vision job's student is 'small_cnn', got '{job.distill.student.name}'")


@contextlib.contextmanager
def _threads(count: int | None) -> Iterator[None]:
    """Run with ``count`` torch CPU threads (``None``: as it is), restoring torch's setting after."""
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _network(job: VisionPipelineJob, num_classes: int, pretrained: bool, seed: int) -> nn.Module:
    """A fresh network with a new head: the same head weights for every method of a seed."""
    torch.manual_seed(seed)
    return build_model(job.model, num_classes=num_classes, pretrained=pretrained)


def _check_model_options(job: VisionPipelineJob, data: VisionData) -> None:
    """Build the network once (timm and the weights package present), resolve the LoRA targets, build the student."""
    model = in_section("model", lambda: _network(job, data.num_classes, True, 0))
    check_lora_targets(job, model)
    build_model("small_cnn", num_classes=data.num_classes, in_channels=1, **job.distill.student.args)


def _vision_data(job: VisionPipelineJob) -> VisionData:
    """Shots and validation images per class, unlabelled images, and a stratified test subset, all seeded."""
    cfg = job.data
    splits = animal_shapes(size=28, normalize=False, seed=cfg.split_seed)
    parts = transfer_split(splits.train, cfg.shots, cfg.val_per_class, cfg.unlabelled, seed=cfg.split_seed)
    labelled, val, unlabelled = parts.labelled, parts.val, parts.unlabelled
    test_images, test_labels = splits.test.tensors
    if cfg.test is not None and cfg.test < len(test_labels):
        rows = torch.linspace(0, len(test_labels) - 1, cfg.test).round().long()  # every k-th: each class keeps its share
        test_images, test_labels = test_images[rows], test_labels[rows]
    to_network = in_section("model", lambda: efficientnet_lite_input(int(job.model[-1]), size=cfg.size))
    parts = {"labelled": labelled.tensors[0], "val": val.tensors[0], "test": test_images, "unlabelled": unlabelled}
    with torch.no_grad():  # 500 at a time: the resized copies of all at once would double the peak memory
        network = {part: torch.cat([to_network(x[i:i + 500]) for i in range(0, len(x), 500)]) for part, x in parts.items()}
    return VisionData(labelled.tensors, val.tensors, unlabelled, (test_images, test_labels), network, to_network,
                      splits.num_classes)


def _method(name: str, pretrained: bool) -> Any:
    """Train the network by method ``name`` from its ImageNet weights (or from random weights: the control)."""

    def train(run: JobRun, seed: int) -> Trained:
        job, data = run.job, run.data
        model = _network(job, data.num_classes, pretrained, seed)
        stage, size = getattr(job, STAGES[name]), job.data
        folder = f"seed{seed}/{name}" + ("" if pretrained else "_random")
        labelled, val = data.loader("labelled", size.batch_size, seed, train=True), data.loader("val", size.eval_batch_size)
        if name == "recipe":
            settings = run.settings(stage, folder, seed)
            # one network (ensemble=False): it teaches the student and is the network the compress stage prunes
            result = fine_tune(model, labelled, val, epochs=stage.trainer.max_epochs, select=stage.select, ensemble=False,
                               freeze_epochs=stage.freeze_epochs, layer_decay=stage.layer_decay,
                               label_smoothing=stage.label_smoothing, optimizer=settings["optimizer"],
                               scheduler=settings["scheduler"], out_dir=settings["config"].out_dir,
                               config=dataclasses.replace(settings["config"], out_dir=None))
            return Trained(model.eval(), result.history, facts={"choice": result.choice} if stage.select else {})
        trainer = run.trainer(FinetuneTrainer, model, stage, folder, seed, **finetune_method(name, stage))
        return Trained(model.eval(), trainer.fit(labelled, val))

    return train


def _student(distilled: bool) -> Any:
    """The small CNN at 28 px: distilled from the teacher on the labelled and unlabelled images, or on the labels alone
    for as many optimizer steps (its control), through :func:`warmstart.distill.distill`."""

    def train(run: JobRun, seed: int) -> Trained:
        job, data, stage = run.job, run.data, run.job.distill
        torch.manual_seed(seed)
        student = build_model("small_cnn", num_classes=data.num_classes, in_channels=1, **stage.student.args)
        teacher = nn.Sequential(data.to_network, run.trained[run.teacher].model)  # it reads the student's images
        setting = (KDSetting("distilled", 1.0, stage.temperature, unlabelled=True) if distilled
                   else KDSetting("hard_labels_same_steps", 0.0, same_steps=True))
        settings = run.settings(stage, f"seed{seed}/student_{'distilled' if distilled else 'hard'}", seed)
        result = distill(student, teacher, data.loader("labelled", job.data.batch_size, seed, train=True, network=False),
                         unlabelled=data.unlabelled, val_loader=data.loader("val", job.data.eval_batch_size, network=False),
                         epochs=stage.trainer.epochs, settings=[setting], select=False, optimizer=settings["optimizer"],
                         scheduler=settings["scheduler"], out_dir=settings["config"].out_dir,
                         config=dataclasses.replace(settings["config"], out_dir=None))
        test, val = (data.loader(part, job.data.eval_batch_size, network=False) for part in ("test", "val"))
        return Trained(student.eval(), result.history, test=result.trainer.evaluate(test),
                       val=result.trainer.evaluate(val), facts={"steps": result.trainer.global_step})

    return train


def _compress(run: JobRun) -> None:
    """Prune the teacher (or the best fully fine-tuned network), recover it by distillation from itself on the
    labelled and unlabelled images, quantize it; measure each beside the students."""
    from warmstart.compress import count_parameters, prune, quantize, recover

    data, stage, size = run.data, run.job.compress, run.job.data
    full = [name for name in ("recipe", "full") if name in run.trained]
    name = run.teacher if run.teacher in full else full[0]
    model, seed = run.trained[name].model, run.seeds[0]
    example, small = data.network["test"][:stage.latency_batch], data.test[0][:stage.latency_batch]
    test = data.loader("test", size.eval_batch_size)
    run.heading(f"compress the {run.label(name)} network: prune {stage.ratio:.0%} of its parameters, recover, int8")
    run.measure(f"fine-tuned network ({run.label(name)})", model, test, example)
    scores = {"gradient_batch": (data.network["labelled"][:32], data.labelled[1][:32])} if stage.importance == "taylor" \
        else {}  # Taylor importance scores channels by |weight x gradient| on a labelled batch
    pruned, report = prune(model, example[:2], ratio=stage.ratio, importance=stage.importance, **scores)
    run.measure(f"pruned {report.achieved_ratio:.0%}, before recovery", pruned, test, example)
    settings = run.settings(stage, "compress/recovery", seed)
    recover(pruned, data.loader("labelled", size.batch_size, seed, train=True), data.loader("val", size.eval_batch_size),
            teacher=model, method="distill", unlabelled=data.network["unlabelled"][:stage.recovery_images],
            optimizer=settings["optimizer"], scheduler=settings["scheduler"], config=settings["config"])
    run.measure(f"pruned {report.achieved_ratio:.0%} + recovered by distillation", pruned.eval(), test, example)
    calibration = [(batch[0],) for batch in data.loader("labelled", size.batch_size)]
    quantized, q_report = quantize(pruned, stage.quantize, example, calibration=calibration)
    run.measure(f"pruned + recovered + {q_report.mode}", quantized, test, example, count_parameters(pruned))
    for student in ("student_distilled", "student_hard"):
        run.measure(run.label(student), run.trained[student].model, data.loader("test", size.eval_batch_size,
                                                                                network=False), small)
    run.notes.append(f"Compression: the {run.label(name)} network pruned by {report.achieved_ratio:.0%} of its "
                     f"parameters (whole channels, {stage.importance}), recovered, then {q_report.mode}; latency is "
                     f"the median CPU time of one batch. {q_report.note}".strip())
