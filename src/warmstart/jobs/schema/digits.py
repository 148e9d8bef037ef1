"""``warmstart run`` (images): pretrain, fine-tune with every method beside its control, distil the best."""

from __future__ import annotations

import dataclasses

from warmstart.config import TrainerConfig
from warmstart.errors import ConfigError, nearest
from warmstart.config import ModelConfig
from warmstart.data.config import DataConfig
from warmstart.jobs.schema.common import (StageConfig, check_distillation_options,
                                          check_finetune_options)

METHODS = ("scratch", "linear_probe", "partial", "full", "gradual", "proximal", "recipe", "recipe_scratch")
@dataclasses.dataclass
class FinetuneStage(StageConfig):
    """The fine-tuning stage: every method in ``methods`` fine-tunes the pretrained model on the target.

    Attributes:
        methods: ``scratch`` (the same architecture and settings from random weights), ``linear_probe``,
            ``partial``, ``full``, ``gradual``, ``proximal`` (full with the proximal term), ``recipe``
            (:func:`warmstart.finetune.fine_tune`, which chooses how to fine-tune on validation) and
            ``recipe_scratch`` (the same recipe from random weights: its control).
        proximal: ``lam`` of the ``proximal`` method.
        label_smoothing: as in :class:`FinetuneJob`.
        keep_head: as in :class:`FinetuneJob`: keep the pretrained head when source and target
            share their classes (then the pretrained model is also measured zero-shot).
    """

    methods: list[str] = dataclasses.field(default_factory=lambda: ["scratch", "linear_probe", "full", "proximal",
                                                                    "recipe", "recipe_scratch"])
    proximal: float = 1.0
    label_smoothing: float | None = None
    keep_head: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_finetune_options(self.proximal, self.label_smoothing, "finetune.")
        for method in self.methods:
            if method not in METHODS:
                raise ConfigError(f"unknown fine-tuning method '{method}' in 'finetune.methods'{nearest(method, METHODS)}; "
                                  f"valid: {', '.join(METHODS)}")


@dataclasses.dataclass
class DistillStage(StageConfig):
    """The distillation stage: the best fine-tuned model (by validation accuracy) teaches ``student``.

    Attributes:
        student: the student's architecture (at least 10x fewer parameters than the model).
        temperature: distillation temperature.
        alpha: weight of the distillation term.
        unlabelled: distil on the target's whole training split without labels (the teacher labels
            it), not only on the labelled shots; needs ``alpha: 1``.
    """

    student: ModelConfig = dataclasses.field(default_factory=lambda: ModelConfig(args={"width": 4}))
    temperature: float = 4.0
    alpha: float = 1.0
    unlabelled: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_distillation_options(self.temperature, self.alpha, "distill.")
        if self.unlabelled and self.alpha != 1.0:
            raise ConfigError(f"distill.unlabelled distils on images without their labels, so distill.alpha must be 1 "
                              f"(got {self.alpha}); set alpha: 1.0, or unlabelled: false to distil on the labelled shots")


@dataclasses.dataclass
class PipelineJob:
    """``warmstart run CONFIG``: pretrain, fine-tune with every method, distill the best, and report.

    Each stage runs the same code as ``warmstart pretrain``, ``finetune`` and ``distill``, with
    the pipeline's data and model and a sub-folder of ``out_dir``.

    Attributes:
        out_dir: the run folder (results.json, report.md, plots, each stage's checkpoints).
        trainer: trainer settings shared by every stage (``seed``, ``device``, ``precision``, ...).
        source: the pretraining data set.
        target: the new task (usually with ``shots``, and ``val_per_class`` for choices).
        model: the network pretrained and fine-tuned.
        pretrain: the pretraining stage.
        finetune: the fine-tuning stage and its methods.
        distill: the distillation stage and its student.
    """

    out_dir: str = "runs/digits_transfer"
    trainer: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)
    source: DataConfig = dataclasses.field(default_factory=DataConfig)
    target: DataConfig = dataclasses.field(default_factory=lambda: DataConfig(name="digits", shots=10))
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    pretrain: StageConfig = dataclasses.field(default_factory=StageConfig)
    finetune: FinetuneStage = dataclasses.field(default_factory=FinetuneStage)
    distill: DistillStage = dataclasses.field(default_factory=DistillStage)

    def __post_init__(self) -> None:
        if self.trainer.out_dir is not None:
            raise ConfigError("warmstart run takes the top-level out_dir, not trainer.out_dir")

