"""The YAML schema of each job: dataclasses checked key by key (unknown keys and wrong types are errors)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from warmstart.config import (OptimizerConfig, SchedulerConfig, TrainerConfig, deep_merge, from_dict,
                              parse_overrides, read_yaml)
from warmstart.errors import ConfigError

T = TypeVar("T")

DATA_SETS = ("mnist5k", "digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "image_folder", "fake")


@dataclasses.dataclass
class DataConfig:
    """Where the data comes from and how it is batched (the ``data:`` section).

    Attributes:
        name: ``mnist5k`` and ``digits`` ship inside packages (offline); ``mnist``,
            ``fashion_mnist``, ``cifar10``, ``cifar100`` download through torchvision;
            ``image_folder`` reads ``root/train`` and ``root/val``; ``fake`` is random images
            (torchvision ``FakeData``) for dry runs.
        size: image side of ``digits`` (8 or 28) and ``image_folder``.
        shots: train on this many labelled examples per class, drawn from the training split
            (bundled sets only; ``None``: the whole training split). The test split is unchanged.
        batch_size: training batch size.
        eval_batch_size: evaluation batch size.
        augment: an augmentation preset name (``none``, ``digits``, ``cifar``, ``cifar_strong``) or
            a mapping of :class:`warmstart.data.AugmentConfig` fields.
        root: data folder (downloads, ``image_folder``); default ``$WARMSTART_DATA``.
        download: let torchvision download missing files.
        workers: DataLoader worker processes (torchvision and folder sets).
        split_seed: seed of the bundled sets' train/test split and of the few-shot draw.
        fake_size: samples of ``fake``.
        fake_shape: ``[channels, height, width]`` of ``fake``.
        fake_classes: classes of ``fake``.
    """

    name: Literal["mnist5k", "digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "image_folder", "fake"] = "mnist5k"
    size: int = 28
    shots: int | None = None
    batch_size: int = 64
    eval_batch_size: int = 500
    augment: str | dict[str, Any] | None = None
    root: str | None = None
    download: bool = True
    workers: int = 0
    split_seed: int = 0
    fake_size: int = 64
    fake_shape: list[int] = dataclasses.field(default_factory=lambda: [1, 28, 28])
    fake_classes: int = 10


@dataclasses.dataclass
class ModelConfig:
    """A model by name (``small_cnn``, ``mlp``, ``resnet18_small`` or any torchvision model) and its arguments.

    ``num_classes`` and ``in_channels`` are filled in from the data unless given in ``args``.
    """

    name: str = "small_cnn"
    args: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class PretrainJob:
    """``warmstart pretrain CONFIG``: train a model on a source data set and save it for fine-tuning.

    Attributes:
        method: ``supervised`` (classification), ``proximal`` (classification with the proximal
            term toward ``init`` or the starting weights) or ``autoencoder`` (reconstruction;
            the encoder is saved for reuse).
        lam: the proximal ``lam`` (method ``proximal``).
        init: weights to start from (a ``.safetensors``/``.pt`` file), e.g. for continued pretraining.
        autoencoder: options of the autoencoder (``width``, ``latent``, ``loss``, ``noise``, ``mask``).
    """

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    trainer: TrainerConfig = dataclasses.field(default_factory=lambda: TrainerConfig(out_dir="runs/pretrain"))
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig | None = None
    method: Literal["supervised", "proximal", "autoencoder"] = "supervised"
    lam: float = 1.0
    init: str | None = None
    autoencoder: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class FinetuneJob:
    """``warmstart finetune CONFIG``: adapt pretrained weights to a new task.

    Attributes:
        pretrained: the pretrained weights (``.safetensors``, ``.pt`` or a warmstart checkpoint);
            ``None`` trains from scratch.
        strategy: ``linear_probe``, ``partial``, ``full``, ``gradual``, or ``recipe`` (the one-call
            :func:`warmstart.finetune.fine_tune`: a linear-probe warm-up, then full fine-tuning; it
            takes ``optimizer.lr`` and ``weight_decay`` and brings its own AdamW and cosine schedule).
        strategy_args: options of the strategy (e.g. ``{k: 2}`` for ``partial``,
            ``{layer_decay: 0.8}`` for ``full``, ``{freeze_epochs: 2}`` for ``recipe``).
        proximal: ``lam`` of the proximal term toward the pretrained weights (``None``: off).
        label_smoothing: label smoothing of the cross-entropy.
    """

    data: DataConfig = dataclasses.field(default_factory=lambda: DataConfig(name="digits", shots=10))
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    trainer: TrainerConfig = dataclasses.field(default_factory=lambda: TrainerConfig(out_dir="runs/finetune"))
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig | None = None
    pretrained: str | None = None
    strategy: Literal["linear_probe", "partial", "full", "gradual", "recipe"] = "full"
    strategy_args: dict[str, Any] = dataclasses.field(default_factory=dict)
    proximal: float | None = None
    label_smoothing: float = 0.0


@dataclasses.dataclass
class DistillJob:
    """``warmstart distill CONFIG``: train a small student on a trained teacher's soft labels.

    Attributes:
        teacher: the teacher's architecture; ``teacher_weights`` its trained weights.
        student: the student's architecture.
        temperature: the softmax temperature ``T``.
        alpha: weight of the distillation term (``1 - alpha`` weights the hard labels).
        cache_teacher: cache the teacher's logits once (offline distillation; needs ``augment``
            off or ``views``).
        views: with ``cache_teacher`` and augmentation, cache this many augmented views per sample.
    """

    teacher: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    teacher_weights: str | None = None
    student: ModelConfig = dataclasses.field(default_factory=lambda: ModelConfig(args={"width": 4}))
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    trainer: TrainerConfig = dataclasses.field(default_factory=lambda: TrainerConfig(out_dir="runs/distill"))
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig | None = None
    temperature: float = 4.0
    alpha: float = 0.9
    cache_teacher: bool = False
    views: int | None = None


@dataclasses.dataclass
class StageConfig:
    """One training stage of the pipeline: epochs, optimizer and schedule."""

    epochs: int = 10
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig | None = dataclasses.field(default_factory=SchedulerConfig)


@dataclasses.dataclass
class PipelineJob:
    """``warmstart run CONFIG``: pretrain, fine-tune with every method, distill the best, and report.

    Attributes:
        out_dir: the run folder (results.json, report.md, plots, each stage's checkpoints).
        seed: seed of every stage.
        device: as for the Trainer.
        precision: as for the Trainer.
        source: the pretraining data set.
        target: the new task (usually with ``shots``).
        model: the network pretrained and fine-tuned.
        pretrain: the pretraining stage.
        finetune: the fine-tuning stage, shared by all methods.
        methods: fine-tuning methods to compare: ``scratch``, ``linear_probe``, ``partial``,
            ``full``, ``gradual``, ``proximal`` (full with the proximal term) and ``recipe``.
        proximal_lam: ``lam`` of the ``proximal`` method.
        student: the distilled student's architecture (at least 10x smaller than ``model``).
        distill: the distillation stage (the student trained from scratch uses the same).
        temperature: distillation temperature.
        alpha: weight of the distillation term.
        distill_on_unlabelled: distil on the whole training pool of the target data set (its
            labels unused; the teacher labels it), not only the ``shots`` labelled examples.
    """

    out_dir: str = "runs/digits_transfer"
    seed: int = 0
    device: str = "auto"
    precision: str = "32"
    source: DataConfig = dataclasses.field(default_factory=DataConfig)
    target: DataConfig = dataclasses.field(default_factory=lambda: DataConfig(name="digits", shots=10))
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    pretrain: StageConfig = dataclasses.field(default_factory=StageConfig)
    finetune: StageConfig = dataclasses.field(default_factory=StageConfig)
    methods: list[str] = dataclasses.field(
        default_factory=lambda: ["scratch", "linear_probe", "full", "proximal", "recipe"])
    proximal_lam: float = 1.0
    student: ModelConfig = dataclasses.field(default_factory=lambda: ModelConfig(args={"width": 4}))
    distill: StageConfig = dataclasses.field(default_factory=StageConfig)
    temperature: float = 4.0
    alpha: float = 1.0
    distill_on_unlabelled: bool = True

    def __post_init__(self) -> None:
        from warmstart.jobs.pipeline import METHODS

        for method in self.methods:
            if method not in METHODS:
                from warmstart.errors import nearest

                raise ConfigError(f"unknown fine-tuning method '{method}' in 'methods'{nearest(method, METHODS)}; "
                                  f"valid: {', '.join(METHODS)}")


JOBS: dict[str, type] = {"pretrain": PretrainJob, "finetune": FinetuneJob, "distill": DistillJob, "run": PipelineJob}


def load_job(kind: str, path: str | Path | None, overrides: Sequence[str] = ()) -> Any:
    """Read the YAML file of a job of ``kind`` (``pretrain``, ``finetune``, ``distill``, ``run``) with overrides.

    Raises:
        ConfigError: unknown kind, missing file, invalid YAML, unknown keys or wrong types (named).
    """
    if kind not in JOBS:
        raise ConfigError(f"unknown job '{kind}'; valid: {', '.join(JOBS)}")
    data = read_yaml(path) if path is not None else {}
    return from_dict(JOBS[kind], deep_merge(data, parse_overrides(overrides)))
