"""``warmstart run`` with ``task: vision``: an ImageNet network to few-shot animal shapes, distilled, compressed."""

from __future__ import annotations

import dataclasses
from typing import Literal

from warmstart.config import TrainerConfig
from warmstart.errors import ConfigError, nearest
from warmstart.config import ModelConfig
from warmstart.jobs.schema.common import (QUANTIZE_MODES, LoraStage, StageConfig, check_distillation_options,
                                          check_finetune_options, check_task_job)

VISION_METHODS = ("linear_probe", "full", "lora", "recipe")  # each runs twice: ImageNet weights, and random weights


@dataclasses.dataclass
class VisionDataConfig:
    """The ``data:`` section of a vision job: few labelled animal shapes, the rest of the training split unlabelled.

    Attributes:
        name: ``animal_shapes`` (ships inside ``animal-shape-mnist``; see :func:`warmstart.data.animal_shapes`).
        size: the side the network sees (images are resized per batch by
            :func:`warmstart.models.efficientnet_lite_input`; smaller is faster).
        shots: labelled training images per class.
        val_per_class: labelled images per class held out of the training split for choices (the teacher).
        unlabelled: training images (other than the shots and the validation images) the teacher
            labels for the student and the pruned network's recovery (``None``: all of them).
        test: test images (every k-th of the test split, so each class keeps its share; ``None``: all 1,941).
        split_seed: seed of the train/test split and of the draw of shots, validation and unlabelled images.
        batch_size: training batch size.
        eval_batch_size: evaluation batch size.
    """

    name: Literal["animal_shapes"] = "animal_shapes"
    size: int = 64
    shots: int = 10
    val_per_class: int = 10
    unlabelled: int | None = 2000
    test: int | None = 500
    split_seed: int = 0
    batch_size: int = 32
    eval_batch_size: int = 250

    def __post_init__(self) -> None:
        for name in ("size", "shots", "val_per_class", "unlabelled", "test", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"data.{name} must be >= 1, got {value}")
        if self.size < 32:
            raise ConfigError(f"data.size must be >= 32 (EfficientNet-Lite downsamples 32x), got {self.size}")


@dataclasses.dataclass
class VisionRecipeStage(StageConfig):
    """The :func:`warmstart.finetune.fine_tune` stage, with its defaults unless set here.

    ``trainer.max_epochs`` left unset takes ``fine_tune``'s default (at least 100 optimizer steps).

    Attributes:
        select: let the recipe choose among its candidates on validation (about 3x the time of one fine-tune).
        freeze_epochs: epochs of the linear-probe warm-up (``None``: ``fine_tune``'s default).
        layer_decay: learning-rate decay per layer group from the head down.
        label_smoothing: of the cross-entropy.
    """

    select: bool = False
    freeze_epochs: int | None = None
    layer_decay: float | None = 0.9
    label_smoothing: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_finetune_options(None, self.label_smoothing, "recipe.")
        if self.freeze_epochs is not None and self.freeze_epochs < 0:
            raise ConfigError(f"recipe.freeze_epochs must be >= 0, got {self.freeze_epochs}")


@dataclasses.dataclass
class VisionDistillStage(StageConfig):
    """The distillation stage of a vision job: the best pretrained model (by validation) teaches a small CNN.

    The student learns from the teacher's probabilities on the labelled and the unlabelled training
    images (at 28 px, the data's own size), beside the same student trained on the labelled images
    alone for the same number of optimizer steps (its control).

    Attributes:
        student: the student's architecture (``small_cnn`` and its ``args``; ``num_classes`` and
            ``in_channels`` are filled in).
        temperature: softmax temperature of the teacher's probabilities and of the student's loss.
    """

    student: ModelConfig = dataclasses.field(default_factory=lambda: ModelConfig(args={"width": 16}))
    temperature: float = 2.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_distillation_options(self.temperature, 1.0, "distill.")


@dataclasses.dataclass
class VisionCompressStage(StageConfig):
    """The compression stage: the fine-tuned network pruned, recovered by distillation from itself, quantized to int8.

    Attributes:
        enabled: run the stage.
        ratio: share of the parameters pruning removes (whole channels).
        importance: how pruning scores channels (see :func:`warmstart.compress.prune`; ``taylor`` scores them on a
            labelled batch and recovered best in ``bench/compress_lite.py``).
        recovery_images: the unlabelled training images the pruned network is distilled on besides
            the labelled ones (the unpruned network labels them all; ``None``: every one; measured in
            ``bench/compress_lite.py``).
        quantize: int8 mode (``int8-static``: convolutions and the head in int8, compiled for x86).
        latency_batch: the batch size latency is measured at (median of repeated CPU calls).
    """

    enabled: bool = True
    ratio: float = 0.3
    importance: str = "taylor"
    recovery_images: int | None = None
    quantize: str = "int8-static"
    latency_batch: int = 32

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.ratio < 1:
            raise ConfigError(f"compress.ratio is the share of parameters pruning removes, in (0, 1); got {self.ratio}")
        if self.quantize not in QUANTIZE_MODES:
            raise ConfigError(f"compress.quantize must be one of {', '.join(QUANTIZE_MODES)}, got '{self.quantize}'"
                              f"{nearest(str(self.quantize), QUANTIZE_MODES)}")
        if self.latency_batch < 1 or (self.recovery_images is not None and self.recovery_images < 1):
            raise ConfigError(f"compress.latency_batch and compress.recovery_images must be >= 1, got "
                              f"{self.latency_batch} and {self.recovery_images}")


@dataclasses.dataclass
class VisionPipelineJob:
    """``warmstart run CONFIG`` with ``task: vision``: an ImageNet network to few-shot animal shapes, distilled, compressed.

    Each method of ``methods`` fine-tunes ``model`` from its ImageNet weights and, as its control,
    the same architecture from random weights (timm's default initialisation), on the same labelled
    images, once per seed of ``seeds``. The pretrained model with the best validation accuracy
    (first seed) teaches a small CNN; the fully fine-tuned network is pruned and quantized.

    Attributes:
        task: ``vision`` (what selects this schema).
        out_dir: the run folder (results.json, report.md, plots, each method's checkpoints).
        trainer: trainer settings shared by every stage (``seed``, ``device``, ...).
        seeds: run every method and control once per seed (``None``: ``trainer.seed`` alone);
            the report gives mean +- sd and the pretrained network's wins over its control.
        threads: torch CPU threads during the run (``None``: torch's default).
        data: the few-shot animal shapes.
        model: ``efficientnet_lite0`` (ImageNet weights shipped in a package; no download).
        methods: which of ``linear_probe``, ``full``, ``lora``, ``recipe`` to run.
        probe: the linear probe's training (logistic regression on cached pooled features).
        finetune: full fine-tuning.
        lora: LoRA.
        recipe: :func:`warmstart.finetune.fine_tune`.
        distill: the student and its training.
        compress: pruning and int8 quantization.
    """

    task: Literal["vision"] = "vision"
    out_dir: str = "runs/vision_transfer"
    trainer: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)
    seeds: list[int] | None = None
    threads: int | None = None
    data: VisionDataConfig = dataclasses.field(default_factory=VisionDataConfig)
    model: Literal["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"] = "efficientnet_lite0"
    methods: list[str] = dataclasses.field(default_factory=lambda: list(VISION_METHODS))
    probe: StageConfig = dataclasses.field(default_factory=StageConfig)
    finetune: StageConfig = dataclasses.field(default_factory=StageConfig)
    lora: LoraStage = dataclasses.field(default_factory=lambda: LoraStage(dropout=0.0))
    recipe: VisionRecipeStage = dataclasses.field(default_factory=VisionRecipeStage)
    distill: VisionDistillStage = dataclasses.field(default_factory=VisionDistillStage)
    compress: VisionCompressStage = dataclasses.field(default_factory=VisionCompressStage)

    def __post_init__(self) -> None:
        check_task_job(self.trainer, self.methods, VISION_METHODS, "vision", self.seeds)
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1 (or null: torch's default), got {self.threads}")

