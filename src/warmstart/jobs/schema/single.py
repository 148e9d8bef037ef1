"""The single-stage commands: ``warmstart pretrain``, ``finetune`` and ``distill``."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from warmstart.config import OptimizerConfig, SchedulerConfig, TrainerConfig
from warmstart.errors import ConfigError
from warmstart.config import ModelConfig
from warmstart.data.config import DataConfig
from warmstart.jobs.schema.common import (check_distillation_options,
                                          check_finetune_options)

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
        method: the fine-tuning method: ``linear_probe``, ``partial``, ``full``, ``gradual``, or
            ``recipe`` (the one-call :func:`warmstart.finetune.fine_tune`, which chooses among
            freeze depths, backbone rates, a linear-probe warm-up and no pretraining by validation
            accuracy, then trains the winner). ``strategy`` is its deprecated spelling (read with a
            warning); ``trainer.strategy`` is the parallelism.
        method_args: options of the method (e.g. ``{k: 2}`` for ``partial``,
            ``{layer_decay: 0.8}`` for ``full``, ``{select: false}`` for the fixed ``recipe``);
            ``strategy_args`` is its deprecated spelling.
        proximal: ``lam`` of the proximal term toward the pretrained weights (``None``: off).
        label_smoothing: label smoothing of the cross-entropy (``None``: the method's default,
            0.1 for ``recipe`` and 0 otherwise; a value given is the value used).
        keep_head: keep the pretrained head (only when the new task has the *same* classes, e.g.
            digits 0-9 in both); by default the model gets a new head, as a new task needs.
    """

    data: DataConfig = dataclasses.field(default_factory=lambda: DataConfig(name="digits", shots=10))
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    trainer: TrainerConfig = dataclasses.field(default_factory=lambda: TrainerConfig(out_dir="runs/finetune"))
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig | None = None
    pretrained: str | None = None
    method: Literal["linear_probe", "partial", "full", "gradual", "recipe"] = "full"
    method_args: dict[str, Any] = dataclasses.field(default_factory=dict)
    proximal: float | None = None
    label_smoothing: float | None = None
    keep_head: bool = False

    def __post_init__(self) -> None:
        check_finetune_options(self.proximal, self.label_smoothing)
        if "ensemble" in self.method_args:
            raise ConfigError("method_args.ensemble: the finetune job saves one fine-tuned network "
                              "(finetuned.safetensors) that later stages load, so it runs fine_tune(ensemble=False); "
                              "drop ensemble, or call warmstart.finetune.fine_tune(..., ensemble=True) from Python")


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
        unlabelled: distil on every training image of ``data`` without its label (the teacher
            labels it; needs ``alpha: 1``), not only on the labelled ``shots``.
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
    unlabelled: bool = False

    def __post_init__(self) -> None:
        check_distillation_options(self.temperature, self.alpha)
        if self.views is not None and self.views < 1:
            raise ConfigError(f"views (augmented views cached per sample) must be >= 1, got {self.views}")
        if self.unlabelled and self.alpha != 1.0:
            raise ConfigError(f"unlabelled: true distils on images without their labels, so alpha must be 1 (got "
                              f"{self.alpha}); set alpha: 1.0, or unlabelled: false to distil on the labelled data")

