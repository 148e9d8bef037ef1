"""``warmstart run`` with ``task: vision``: an ImageNet EfficientNet-Lite fine-tuned on few animal shapes, each method
beside its random-weight control, then distilled into a small CNN, pruned and quantized to int8.

Every method trains on the same labelled images (``data.shots`` per class); choices (the teacher,
the network to compress) use the validation images, and test accuracy is measured once per model.
The other training images are unlabelled: the teacher labels them for the student and for the
pruned network's recovery.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from warmstart._run_dir import check_out_dir, job_lock
from warmstart.config import save_config
from warmstart.data import InMemoryLoader
from warmstart.data.animals import animal_shapes
from warmstart.data.bundled import per_class_split
from warmstart.errors import ConfigError
from warmstart.finetune import FinetuneTrainer, fine_tune
from warmstart.finetune.lora import check_lora_options, require_peft, resolve_targets
from warmstart.jobs.schema import StageConfig, VisionPipelineJob
from warmstart.jobs.stages import check_settings, recorded_job, rerun_command, resolve_seed
from warmstart.jobs.vision_report import LABELS, print_vision_table, write_vision_report
from warmstart.models import build_model, efficientnet_lite_input
from warmstart.trainer import Trainer

CONTROL = "_random"  # suffix of a method's control: the same architecture and settings from random weights
STUDENTS = ("student_distilled", "student_hard")


@dataclasses.dataclass
class VisionData:
    """The labelled, validation, unlabelled and test images and labels, twice: ``(N, 1, 28, 28)`` in ``[0, 1]`` (the
    student's) and as the network takes them (``network``: resized, 3 channels, ``[-1, 1]``).

    The network's inputs are made once, not per batch: the fine-tuning recipe's linear-probe
    phase drops a loader's ``transform`` (taken for augmentation) when it caches features.
    """

    labelled: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    unlabelled: torch.Tensor
    test: tuple[torch.Tensor, torch.Tensor]
    network: dict[str, torch.Tensor]
    num_classes: int

    def loader(self, part: str, batch_size: int, seed: int = 0, train: bool = False) -> InMemoryLoader:
        """Batches of the network's inputs of ``part`` (``labelled``, ``val``, ``test``) with their labels."""
        return InMemoryLoader(self.network[part], getattr(self, part)[1], batch_size=batch_size, shuffle=train,
                              seed=seed)


class _VisionRun:
    """One vision pipeline run: its folder, data, results, and the first seed's fine-tuned networks."""

    def __init__(self, job: VisionPipelineJob, data: VisionData, progress: bool):
        self.job, self.data, self.out, self.progress = job, data, Path(job.out_dir).expanduser(), progress
        self.seeds: list[int] = job.seeds or [job.trainer.seed]  # type: ignore[list-item]  (resolved before)
        self.runs: dict[str, list[dict[str, Any]]] = {}  # method -> one row per seed
        self.curves: dict[str, list[dict[str, Any]]] = {}  # the first seed's
        self.networks: dict[str, nn.Module] = {}  # the first seed's pretrained networks, for the teacher and compression

    def trainer_config(self, stage: StageConfig, folder: str, seed: int) -> Any:
        """The stage's trainer settings, writing into ``out_dir/folder`` (replacing the earlier run's there when the job
        may overwrite)."""
        return dataclasses.replace(stage.trainer, out_dir=str(self.out / folder), seed=seed,
                                   progress=stage.trainer.progress and self.progress,
                                   overwrite=stage.trainer.overwrite or self.job.trainer.overwrite)

    def trainer(self, cls: type[Trainer], model: nn.Module, stage: StageConfig, folder: str, seed: int,
                **options: Any) -> Trainer:
        """A trainer with the stage's settings writing into ``out_dir/folder``, the whole job recorded in checkpoints."""
        config = self.trainer_config(stage, folder, seed)
        trainer = cls(model, copy.deepcopy(stage.optimizer), config=config, scheduler=copy.deepcopy(stage.scheduler),
                      **options)
        trainer.job_config = recorded_job(self.job)
        return trainer

    def network(self, pretrained: bool, seed: int) -> nn.Module:
        """A fresh network with a new head, the same head weights for every method of a seed."""
        torch.manual_seed(seed)
        return build_model(self.job.model, num_classes=self.data.num_classes, pretrained=pretrained)

    def heading(self, text: str) -> None:
        if self.progress:
            print(f"\n== {text} ==", flush=True)

    def record(self, name: str, row: dict[str, Any], history: list[dict[str, Any]], seed: int) -> None:
        self.runs.setdefault(name, []).append({**row, "seed": seed})
        if seed == self.seeds[0]:
            self.curves[name] = history
        val = f", validation {100 * row['val_accuracy']:.1f}%" if "val_accuracy" in row else ""
        print(f"[warmstart run] {LABELS.get(name, name)} (seed {seed}): test accuracy {100 * row['accuracy']:.1f}%{val}, "
              f"{row['trainable']:,} trainable parameters ({row['seconds']:.1f} s)", flush=True)


def run_vision_pipeline(job: VisionPipelineJob, progress: bool = True) -> dict[str, Any]:
    """Run ``job`` and return ``{"methods": {name: row}, "gains": {...}, "compression": {...}, "total": {...}}``.

    1. For each seed, each method of ``job.methods`` (``linear_probe``: logistic regression on
       the frozen network's pooled features; ``full``; ``lora``; ``recipe``:
       :func:`warmstart.finetune.fine_tune`) trains the ImageNet network, and its control
       (``<method>_random``) the same architecture from random weights.
    2. The pretrained network with the best validation accuracy (first seed) labels the labelled
       and unlabelled training images; a small CNN learns from its probabilities, beside the same
       CNN trained on the labelled images alone for the same number of optimizer steps.
    3. The best fully fine-tuned network (``full`` or ``recipe``) is pruned, recovered by
       distillation from itself, and quantized to int8: accuracy, parameters, size, latency.

    Writes ``results.json``, ``report.md``, plots and each method's checkpoints into ``job.out_dir``.
    Every setting the run will use is checked before ``out_dir`` is claimed or any step trained.

    Raises:
        ConfigError: bad settings (named by their section), before anything is written or trained.
        OutDirBusyError: another run holds ``out_dir``.
        RunExistsError: ``out_dir`` holds an earlier run and ``trainer.overwrite`` is False (``--overwrite``).
    """
    resolve_seed(job)
    out = check_out_dir(job.out_dir)
    check_vision_job(job)
    started = time.perf_counter()
    with _threads(job.threads):
        data = _vision_data(job)
        run = _VisionRun(job, data, progress)
        _check_model_options(run)  # before the lock: with overwrite, it deletes the earlier run
        with job_lock(out, job.trainer.overwrite, stages=_stage_folders(job, run.seeds)):
            save_config(recorded_job(job), out / "job.yaml")
            for seed in run.seeds:
                for method in job.methods:
                    for pretrained in (True, False):
                        METHODS[method](run, seed, pretrained)
            _distill(run)
            compression = _compress(run) if job.compress.enabled else {}
            results = _summary(run, compression, time.perf_counter() - started)
            write_vision_report(out, job, results, run.curves, command=rerun_command(out))
    print_vision_table(results)
    print(f"[warmstart run] wrote {out / 'results.json'}, {out / 'report.md'} and plots")
    return results


def check_vision_job(job: VisionPipelineJob) -> None:
    """Check every setting the run will use, before any data, model or step.

    Each stage the job runs has its trainer, optimizer and schedule checked
    (:func:`warmstart.jobs.stages.check_settings`); the LoRA options as :func:`warmstart.finetune.add_lora`
    checks them; the pruning importance; and the timm and weights packages are imported.

    Raises:
        ConfigError: naming the section (``lora.trainer.precision``, ...) and the fix.
    """
    for section in _sections(job):
        stage = getattr(job, section)
        check_settings(stage.trainer, stage.optimizer, stage.scheduler, where=section)
    if "lora" in job.methods:
        lora = job.lora
        _in_section("lora", lambda: check_lora_options(lora.r, lora.alpha, lora.dropout, lora.targets))
        require_peft()
    if job.compress.enabled:
        from warmstart.compress._pruning import IMPORTANCES  # the compress extra loads on first use

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


def _sections(job: VisionPipelineJob) -> list[str]:
    used = {"linear_probe": "probe", "full": "finetune", "lora": "lora", "recipe": "recipe"}
    return [*dict.fromkeys(used[m] for m in job.methods), "distill", *(("compress",) if job.compress.enabled else ())]


def _in_section(section: str, check: Callable[[], Any]) -> Any:
    try:
        return check()
    except ConfigError as err:
        raise ConfigError(f"{section}: {err}") from None


def _stage_folders(job: VisionPipelineJob, seeds: list[int]) -> tuple[str, ...]:
    """Every sub-folder a run may write: an earlier run's are refused or cleared together."""
    names = [*job.methods, *(m + CONTROL for m in job.methods)]
    phases = [f"/{phase}" for phase in ("probe", "full")]
    folders = [f"seed{seed}/{name}{phase}" for seed in seeds for name in names
               for phase in ("", *(phases if name.startswith("recipe") else ()))]
    students = [f"seed{seed}/{name}" for seed in seeds for name in STUDENTS]
    return (*folders, *students, "compress/recovery")


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


def _check_model_options(run: _VisionRun) -> None:
    """Build the network once (timm and the weights package present) and resolve the LoRA targets against it."""
    model = _in_section("model", lambda: run.network(True, run.seeds[0]))
    if "lora" in run.job.methods:
        _in_section("lora.targets", lambda: resolve_targets(model, run.job.lora.targets))
    build_model("small_cnn", num_classes=run.data.num_classes, in_channels=1, **run.job.distill.student.args)


def _vision_data(job: VisionPipelineJob) -> VisionData:
    """Shots and validation images per class, unlabelled images, and a stratified test subset, all seeded."""
    cfg = job.data
    splits = animal_shapes(size=28, normalize=False, seed=cfg.split_seed)
    labelled, rest = per_class_split(splits.train, cfg.shots, seed=cfg.split_seed)
    val, pool = per_class_split(rest, cfg.val_per_class, seed=cfg.split_seed + 1)
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(cfg.split_seed))
    unlabelled = pool.tensors[0][order[:cfg.unlabelled]]
    test_images, test_labels = splits.test.tensors
    if cfg.test is not None and cfg.test < len(test_labels):
        rows = torch.linspace(0, len(test_labels) - 1, cfg.test).round().long()  # every k-th: each class keeps its share
        test_images, test_labels = test_images[rows], test_labels[rows]
    to_network = _in_section("model", lambda: efficientnet_lite_input(int(job.model[-1]), size=cfg.size))
    parts = {"labelled": labelled.tensors, "val": val.tensors, "test": (test_images, test_labels)}
    network = {part: _batched(to_network, images) for part, (images, _) in parts.items()}
    network["unlabelled"] = _batched(to_network, unlabelled)
    return VisionData(labelled.tensors, val.tensors, unlabelled, (test_images, test_labels), network, splits.num_classes)


@torch.no_grad()
def _batched(transform: nn.Module, images: torch.Tensor, size: int = 500) -> torch.Tensor:
    """``transform`` applied ``size`` images at a time (the resized copies of all at once would double the peak memory)."""
    return torch.cat([transform(images[i:i + size]) for i in range(0, len(images), size)])

# ---------------------------------------------------------------------------------------------- methods


def _name(method: str, pretrained: bool) -> str:
    return method if pretrained else method + CONTROL


def _linear_probe(run: _VisionRun, seed: int, pretrained: bool) -> None:
    """Logistic regression on the frozen network's globally pooled features (computed once per network)."""
    name, size = _name("linear_probe", pretrained), run.job.data.eval_batch_size
    run.heading(f"{LABELS[name]} (seed {seed})")
    started = time.perf_counter()
    model = run.network(pretrained, seed)
    features = {part: pooled_features(model, run.data.loader(part, size)) for part in ("labelled", "val", "test")}
    labels = {part: getattr(run.data, part)[1] for part in features}
    torch.manual_seed(seed)
    probe = nn.Linear(features["labelled"].shape[1], run.data.num_classes)
    trainer = run.trainer(Trainer, probe, run.job.probe, f"seed{seed}/{name}", seed)
    loaders = {part: InMemoryLoader(features[part], labels[part], batch_size=run.job.data.batch_size,
                                    shuffle=part == "labelled", seed=seed) for part in features}
    history = trainer.fit(loaders["labelled"], loaders["val"])
    test = trainer.evaluate(loaders["test"])
    run.record(name, _row(test, history, probe, model, started), history, seed)


@torch.no_grad()
def pooled_features(model: nn.Module, loader: Any) -> torch.Tensor:
    """``(N, F)`` globally average-pooled features of a timm network (before its head), in the loader's order."""
    was_training = model.training
    model.eval()
    parts = [model.forward_head(model.forward_features(batch[0]), pre_logits=True) for batch in loader]
    model.train(was_training)
    return torch.cat(parts)


def _full(run: _VisionRun, seed: int, pretrained: bool) -> None:
    run.heading(f"{LABELS[_name('full', pretrained)]} (seed {seed}, {run.job.finetune.trainer.epochs} epochs)")
    _fine_tune(run, "full", seed, pretrained, run.job.finetune, {"method": {"name": "full", "backbone_lr_mult": 1.0}})


def _lora(run: _VisionRun, seed: int, pretrained: bool) -> None:
    stage = run.job.lora
    run.heading(f"{LABELS[_name('lora', pretrained)]} (seed {seed}, {stage.trainer.epochs} epochs)")
    options = {"method": "lora", "lora": {"r": stage.r, "alpha": stage.alpha, "targets": stage.targets,
                                           "dropout": stage.dropout}}
    _fine_tune(run, "lora", seed, pretrained, stage, options)


def _fine_tune(run: _VisionRun, method: str, seed: int, pretrained: bool, stage: StageConfig,
               options: dict[str, Any]) -> None:
    name, data, size = _name(method, pretrained), run.data, run.job.data
    started = time.perf_counter()
    model = run.network(pretrained, seed)
    trainer = run.trainer(FinetuneTrainer, model, stage, f"seed{seed}/{name}", seed, **options)
    history = trainer.fit(data.loader("labelled", size.batch_size, seed, train=True), data.loader("val", size.eval_batch_size))
    test = trainer.evaluate(data.loader("test", size.eval_batch_size))
    run.record(name, _row(test, history, model, model, started), history, seed)
    _keep(run, name, model, seed)


def _recipe(run: _VisionRun, seed: int, pretrained: bool) -> None:
    """:func:`warmstart.finetune.fine_tune`: a linear-probe warm-up, then every layer with layer-wise decay."""
    stage, data, size = run.job.recipe, run.data, run.job.data
    name = _name("recipe", pretrained)
    run.heading(f"{LABELS[name]} (seed {seed}, {stage.freeze_epochs} + {stage.trainer.epochs} epochs)")
    started = time.perf_counter()
    model = run.network(pretrained, seed)
    config = run.trainer_config(stage, f"seed{seed}/{name}", seed)
    result = fine_tune(model, data.loader("labelled", size.batch_size, seed, train=True),
                       data.loader("val", size.eval_batch_size), epochs=stage.trainer.epochs, select=stage.select,
                       freeze_epochs=stage.freeze_epochs, layer_decay=stage.layer_decay,
                       label_smoothing=stage.label_smoothing, optimizer=copy.deepcopy(stage.optimizer),
                       scheduler=copy.deepcopy(stage.scheduler), out_dir=config.out_dir,
                       config=dataclasses.replace(config, out_dir=None))
    test = result.trainer.evaluate(data.loader("test", size.eval_batch_size))
    row = {**_row(test, result.history, model, model, started), **({"choice": result.choice} if stage.select else {})}
    run.record(name, row, result.history, seed)
    _keep(run, name, model, seed)


def _keep(run: _VisionRun, name: str, model: nn.Module, seed: int) -> None:
    if seed == run.seeds[0] and not name.endswith(CONTROL):
        run.networks[name] = model.eval()


def _row(test: dict[str, float], history: list[dict[str, Any]], trained: nn.Module, whole: nn.Module,
         started: float) -> dict[str, Any]:
    """Test accuracy, the last epoch's validation accuracy, parameters (without LoRA adapters) and seconds."""
    return {"accuracy": test["accuracy"], "val_accuracy": history[-1]["val_accuracy"],
            "trainable": sum(p.numel() for p in trained.parameters() if p.requires_grad),
            "params": sum(p.numel() for n, p in whole.named_parameters() if "lora_" not in n),
            "seconds": time.perf_counter() - started}


METHODS: dict[str, Callable[[_VisionRun, int, bool], None]] = {
    "linear_probe": _linear_probe, "full": _full, "lora": _lora, "recipe": _recipe,
}


# ---------------------------------------------------------------------------------------------- distillation


def soft_cross_entropy(output: torch.Tensor, target: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``T^2 * mean_i(-sum_c target_ic * log_softmax(output_i / T)_c)``; class-index targets as one-hot rows.

    With the teacher's ``softmax(logits / T)`` as ``target`` this is Hinton et al.'s distillation
    loss up to a constant (the teacher's entropy); validation passes class indices.
    """
    return temperature ** 2 * F.cross_entropy(output / temperature, target)


@torch.no_grad()
def teacher_probabilities(model: nn.Module, loader: Any, temperature: float) -> torch.Tensor:
    """``(N, C)`` ``softmax(logits / T)`` of ``model`` (in eval mode) over an unshuffled loader."""
    was_training = model.training
    model.eval()
    probabilities = torch.cat([(model(batch[0]).float() / temperature).softmax(-1) for batch in loader])
    model.train(was_training)
    return probabilities


def _distill(run: _VisionRun) -> None:
    """For each seed, the small CNN on the teacher's probabilities for every training image, and on the labelled
    images alone for as many optimizer steps (its control). The teacher is the first seed's best network."""
    stage, data, size = run.job.distill, run.data, run.job.data
    best = _best(run, run.networks)
    images = torch.cat([data.labelled[0], data.unlabelled])
    transfer = InMemoryLoader(torch.cat([data.network["labelled"], data.network["unlabelled"]]), None,
                              batch_size=size.eval_batch_size)
    started = time.perf_counter()
    soft = teacher_probabilities(run.networks[best], transfer, stage.temperature)
    teacher_seconds = time.perf_counter() - started
    loss = functools.partial(soft_cross_entropy, temperature=stage.temperature)
    val = InMemoryLoader(*data.val, batch_size=size.eval_batch_size)  # the student reads 28 px images as they are
    steps = stage.trainer.epochs * math.ceil(len(images) / size.batch_size)
    tiled = torch.arange(len(images)) % len(data.labelled[1])  # the control's epochs as long as the distilled student's
    for seed in run.seeds:
        run.heading(f"distil (seed {seed}): the {LABELS[best]} network (best validation accuracy) teaches "
                    f"{stage.student.name} {stage.student.args} on {len(images):,} images ({steps} steps)")
        distilled = InMemoryLoader(images, soft, batch_size=size.batch_size, shuffle=True, seed=seed)
        _student(run, "student_distilled", seed, distilled, val, {"loss_fn": loss},
                 {"teacher": best, "teacher_seconds": round(teacher_seconds, 2), "images": len(images)})
        run.heading(f"the same student on the {len(data.labelled[1])} labelled images alone (seed {seed}, {steps} "
                    "steps: its control)")
        hard = InMemoryLoader(data.labelled[0][tiled], data.labelled[1][tiled], batch_size=size.batch_size,
                              shuffle=True, seed=seed)
        _student(run, "student_hard", seed, hard, val, {}, {"images": len(data.labelled[1])})


def _best(run: _VisionRun, networks: dict[str, nn.Module]) -> str:
    """The network with the best validation accuracy of the first seed: chosen on validation, never on test."""
    return max(networks, key=lambda name: run.runs[name][0]["val_accuracy"])


def _student(run: _VisionRun, name: str, seed: int, train: InMemoryLoader, val: InMemoryLoader,
             options: dict[str, Any], facts: dict[str, Any]) -> None:
    stage, data = run.job.distill, run.data
    started = time.perf_counter()
    torch.manual_seed(seed)
    student = build_model("small_cnn", num_classes=data.num_classes, in_channels=1, **stage.student.args)
    config = run.trainer_config(stage, f"seed{seed}/{name}", seed)
    trainer = Trainer(student, copy.deepcopy(stage.optimizer), config=config, scheduler=copy.deepcopy(stage.scheduler),
                      **options)
    trainer.job_config = recorded_job(run.job)
    history = trainer.fit(train, val)
    test = trainer.evaluate(InMemoryLoader(*data.test, batch_size=run.job.data.eval_batch_size))
    # the steps it took, as the trainer counted them: the control's must equal the distilled student's
    run.record(name, {**_row(test, history, student, student, started), **facts, "steps": trainer.global_step},
               history, seed)
    if seed == run.seeds[0]:  # the first seed's students are measured beside the compressed networks
        run.networks[name] = student.eval()


# ---------------------------------------------------------------------------------------------- compression


def _compress(run: _VisionRun) -> dict[str, dict[str, Any]]:
    """Prune the best fully fine-tuned network, recover it by distillation from itself, quantize it; measure each."""
    from warmstart.compress import count_parameters, measure_latency, prune, quantize, recover, tensor_bytes

    stage, data, size = run.job.compress, run.data, run.job.data
    seed = run.seeds[0]
    name = _best(run, {k: v for k, v in run.networks.items() if k in ("full", "recipe")})
    model = run.networks[name]
    example = data.network["test"][:stage.latency_batch]
    small_example = data.test[0][:stage.latency_batch]
    test = data.loader("test", size.eval_batch_size)
    rows: dict[str, dict[str, Any]] = {}

    def measure(label: str, net: nn.Module, loader: Any, inputs: torch.Tensor, params: int | None = None) -> None:
        rows[label] = {"accuracy": _accuracy(net, loader), "params": params or count_parameters(net),
                       "bytes": tensor_bytes(net), "latency_ms": round(1e3 * measure_latency(net, inputs), 3)}
        r = rows[label]
        print(f"[warmstart run] {label}: test accuracy {100 * r['accuracy']:.1f}%, {r['params']:,} parameters, "
              f"{r['bytes'] / 1e6:.2f} MB, {r['latency_ms']:.1f} ms per batch of {len(inputs)}", flush=True)

    run.heading(f"compress the {LABELS[name]} network: prune {stage.ratio:.0%} of its parameters, recover, int8")
    measure(f"fine-tuned network ({LABELS[name]})", model, test, example)
    started = time.perf_counter()
    pruned, report = prune(model, example[:2], ratio=stage.ratio, importance=stage.importance)
    # the library's recovery: the unpruned network labels the labelled and the unlabelled images, the pruned learns
    recover(pruned, data.loader("labelled", size.batch_size, seed, train=True), data.loader("val", size.eval_batch_size),
            teacher=model, method="distill", unlabelled=data.network["unlabelled"][:stage.recovery_images],
            config=run.trainer_config(stage, "compress/recovery", seed), optimizer=stage.optimizer,
            scheduler=stage.scheduler)
    pruned.eval()
    measure(f"pruned {report.achieved_ratio:.0%} + distilled from it", pruned, test, example)
    calibration = [(batch[0],) for batch in data.loader("labelled", size.batch_size)]
    quantized, q_report = quantize(pruned, stage.quantize, example, calibration=calibration)
    measure(f"pruned + distilled + {q_report.mode}", quantized, test, example, count_parameters(pruned))
    student_test = InMemoryLoader(*data.test, batch_size=size.eval_batch_size)
    for student in STUDENTS:
        measure(LABELS[student], run.networks[student], student_test, small_example)
    rows["_note"] = {"network": name, "seconds": round(time.perf_counter() - started, 2),
                     "pruned_ratio": round(report.achieved_ratio, 4), "quantize_note": q_report.note,
                     "latency_batch": len(example)}
    return rows


def _accuracy(model: nn.Module, loader: Any) -> float:
    from warmstart.evaluation import evaluate

    return round(evaluate(model, loader)["accuracy"], 6)


# ---------------------------------------------------------------------------------------------- summary


def _summary(run: _VisionRun, compression: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Mean and sd over seeds of each method, and each pretrained method's gain over its control with its wins."""
    methods: dict[str, dict[str, Any]] = {}
    for name, rows in run.runs.items():
        accuracies = [r["accuracy"] for r in rows]
        methods[name] = {**{k: v for k, v in rows[0].items() if k not in ("accuracy", "val_accuracy", "seed", "seconds")},
                         "accuracy": round(float(np.mean(accuracies)), 6),
                         "accuracy_sd": round(float(np.std(accuracies, ddof=1)), 6) if len(rows) > 1 else None,
                         "val_accuracy": round(float(np.mean([r["val_accuracy"] for r in rows])), 6),
                         "seconds": round(float(np.mean([r["seconds"] for r in rows])), 2),
                         "per_seed": {str(r["seed"]): round(r["accuracy"], 6) for r in rows}}
    gains = {method: _paired(run.runs, method, method + CONTROL) for method in run.job.methods}
    return {"methods": methods, "gains": gains, "distillation": _paired(run.runs, *STUDENTS), "compression": compression,
            "seeds": run.seeds,
            "total": {"seconds": round(seconds, 1), "threads": torch.get_num_threads()}}


def _paired(runs: dict[str, list[dict[str, Any]]], name: str, control: str) -> dict[str, Any]:
    """``name``'s test accuracy minus ``control``'s, seed by seed: mean, sd, and the seeds where ``name`` is ahead."""
    diffs = [a["accuracy"] - b["accuracy"] for a, b in zip(runs[name], runs[control], strict=True)]
    return {"mean": round(float(np.mean(diffs)), 6),
            "sd": round(float(np.std(diffs, ddof=1)), 6) if len(diffs) > 1 else None,
            "wins": sum(d > 0 for d in diffs), "seeds": len(diffs)}
