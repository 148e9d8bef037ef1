"""The YAML schema of each job: dataclasses checked key by key (unknown keys and wrong types are errors).

``warmstart run`` reads a :class:`PipelineJob` (images), a :class:`TextPipelineJob` when the file
(or an override) says ``task: text``, or a :class:`VisionPipelineJob` with ``task: vision``.
"""

from __future__ import annotations

import dataclasses
import importlib
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from warmstart.config import (OptimizerConfig, SchedulerConfig, TrainerConfig, deep_merge, from_dict,
                              parse_overrides, read_yaml)
from warmstart.errors import ConfigError, nearest

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
        split_seed: seed of the bundled sets' train/test split, the validation split and the few-shot draw.
        val_per_class: hold out this many labelled examples per class of the training split as a
            validation set (bundled and ``fake`` sets), disjoint from ``shots`` and from the test
            split: per-epoch metrics and any choice (the best method, the teacher) use it, and the
            test split is evaluated once at the end. ``None``: no validation set.
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
    val_per_class: int | None = None
    fake_size: int = 64
    fake_shape: list[int] = dataclasses.field(default_factory=lambda: [1, 28, 28])
    fake_classes: int = 10

    def __post_init__(self) -> None:
        for name in ("batch_size", "eval_batch_size", "fake_size", "fake_classes", "shots", "val_per_class"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"data.{name} must be >= 1, got {value}")
        if self.workers < 0:
            raise ConfigError(f"data.workers must be >= 0, got {self.workers}")
        if self.name == "digits" and self.size not in (8, 28):
            raise ConfigError(f"data.size of 'digits' must be 8 (the original images) or 28 (upsampled like MNIST), "
                              f"got {self.size}")
        if len(self.fake_shape) != 3 or any(side < 1 for side in self.fake_shape):
            raise ConfigError(f"data.fake_shape must be [channels, height, width] of positive sizes, got {self.fake_shape}")


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


def check_finetune_options(proximal: float | None, label_smoothing: float | None, where: str = "") -> None:
    """Refuse a negative ``proximal`` or a ``label_smoothing`` outside [0, 1] when the config is read."""
    if proximal is not None and not proximal >= 0:
        raise ConfigError(f"{where}proximal (the lam of the proximal term) must be >= 0, got {proximal}")
    if label_smoothing is not None and not 0 <= label_smoothing <= 1:
        raise ConfigError(f"{where}label_smoothing must be in [0, 1], got {label_smoothing}")


def check_distillation_options(temperature: float, alpha: float, where: str = "") -> None:
    """Refuse a temperature that is not positive or an alpha outside [0, 1] when the config is read."""
    if not temperature > 0:
        raise ConfigError(f"{where}temperature must be a positive number, got {temperature} (Hinton et al. use 2 to 20)")
    if not 0 <= alpha <= 1:
        raise ConfigError(f"{where}alpha (the weight of the distillation term) must be in [0, 1], got {alpha}")


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


METHODS = ("scratch", "linear_probe", "partial", "full", "gradual", "proximal", "recipe", "recipe_scratch")


@dataclasses.dataclass
class StageConfig:
    """One training stage of ``warmstart run``: the same ``trainer``/``optimizer``/``scheduler`` sections as a job.

    The pipeline's top-level ``trainer`` section holds defaults shared by every stage; a stage's own
    ``trainer`` keys win over the file's shared ones, and command-line overrides win over both
    (``trainer.max_epochs=1`` shortens every stage, ``finetune.trainer.max_epochs=5`` one).
    """

    trainer: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig | None = dataclasses.field(default_factory=SchedulerConfig)

    def __post_init__(self) -> None:
        if self.trainer.out_dir is not None:
            raise ConfigError(f"a pipeline stage's trainer.out_dir ({self.trainer.out_dir!r}) is set by the pipeline: "
                              "set the top-level out_dir instead")


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


TEXT_METHODS = ("majority", "linear_probe", "scratch", "full", "lora", "lora_proximal")


@dataclasses.dataclass
class TextDataConfig:
    """The ``data:`` section of a text job.

    Attributes:
        name: the data set: ``vader_lexicon`` (ships inside ``vadersentiment``; see
            :func:`warmstart.data.vader_lexicon`).
        task: ``polarity`` (positive or negative, from words with ``|valence| >= 1``).
        split_seed: seed of the stratified train/validation/test split (and of ``labelled``).
        val_fraction: share held out for validation (choices: the teacher).
        test_fraction: share held out for testing (measured once per model).
        labelled: share of each class of the training split whose labels the methods use; the
            rest is unlabelled (no method sees those labels): the teacher labels it for the
            distilled student. 1.0: every training label is used.
        max_length: truncate texts to this many tokens (the lexicon's longest entry has 11).
        batch_size: training batch size.
        eval_batch_size: evaluation batch size.
        limit: use at most this many texts of each split (quick runs and tests; ``None``: all).
    """

    name: Literal["vader_lexicon"] = "vader_lexicon"
    task: Literal["polarity"] = "polarity"
    split_seed: int = 0
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    labelled: float = 0.25
    max_length: int = 16
    batch_size: int = 32
    eval_batch_size: int = 256
    limit: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_length", "batch_size", "eval_batch_size", "limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"data.{name} must be >= 1, got {value}")
        if not 0 < self.labelled <= 1:
            raise ConfigError(f"data.labelled (the share of training labels used) must be in (0, 1], got {self.labelled}")


@dataclasses.dataclass
class LoraStage(StageConfig):
    """The LoRA stage of a text job: adapters on the frozen transformer, the head in full.

    Attributes:
        r: rank of the adapters.
        alpha: scaling numerator (the update is ``alpha / r * B A``).
        targets: ``auto`` (the attention and MLP layers) or module names / dotted suffixes.
        dropout: dropout on the adapters' inputs.
        proximal: ``lam`` of the ``lora_proximal`` method's proximal term (toward the adapters' start;
            the data term is weighted by ``lam``, so a larger value pulls less).
    """

    r: int = 8
    alpha: float = 16.0
    targets: str | list[str] = "auto"
    dropout: float = 0.05
    proximal: float = 100.0


@dataclasses.dataclass
class TextDistillStage(StageConfig):
    """The distillation stage of a text job: the best model (by validation accuracy) teaches a tiny student.

    The student is :func:`warmstart.distill.ngram_classifier` over hashed character n-grams
    (:class:`warmstart.data.CharNgramTokenizer`), trained with the same settings on: the hard
    labels; the raters' label distributions (``alpha`` of them, ``1 - alpha`` hard labels); the
    teacher's probabilities for the labelled words; and the teacher's probabilities for the
    labelled and the unlabelled words (``data.labelled``). A reference row trains it on every
    training label, the hidden ones too: what the labels the teacher stands in for would give.

    Attributes:
        buckets: n-gram ids (the student's embedding rows).
        dim: the student's embedding width.
        ngrams: the n-gram lengths.
        temperature: softmax temperature of the soft-label losses.
        alpha: weight of the raters' distributions against the hard labels; the teacher's
            students use ``alpha = 1`` (the unlabelled words have no hard label).
    """

    buckets: int = 4096
    dim: int = 32
    ngrams: list[int] = dataclasses.field(default_factory=lambda: [2, 3, 4])
    temperature: float = 2.0
    alpha: float = 0.5


@dataclasses.dataclass
class TextPipelineJob:
    """``warmstart run CONFIG`` with ``task: text``: fine-tune a pretrained transformer, LoRA, distil, report.

    Baselines (majority class; a linear probe: logistic regression on the frozen model's
    mean-pooled embeddings), full fine-tuning, LoRA and LoRA with the proximal term each train on
    the same labelled words; the model with the best validation accuracy then teaches a tiny
    student on the labelled and the unlabelled words.

    Attributes:
        task: ``text`` (what selects this schema).
        out_dir: the run folder (results.json, report.md, plots, each method's checkpoints).
        trainer: trainer settings shared by every stage (``seed``, ``device``, ``precision``, ...).
        data: the text data set.
        model: ``all-MiniLM-L6-v2`` (bundled), a folder with a Hugging Face checkpoint, or a Hub name.
        methods: which of ``majority``, ``linear_probe``, ``scratch`` (the full fine-tune from random
            weights: the control), ``full``, ``lora``, ``lora_proximal`` to run.
        probe: the linear probe's training (on cached embeddings).
        finetune: full fine-tuning.
        lora: LoRA (and ``lora_proximal``).
        distill: the student and its trainings.
    """

    task: Literal["text"] = "text"
    out_dir: str = "runs/text_sentiment"
    trainer: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)
    data: TextDataConfig = dataclasses.field(default_factory=TextDataConfig)
    model: str = "all-MiniLM-L6-v2"
    methods: list[str] = dataclasses.field(default_factory=lambda: list(TEXT_METHODS))
    probe: StageConfig = dataclasses.field(default_factory=StageConfig)
    finetune: StageConfig = dataclasses.field(default_factory=StageConfig)
    lora: LoraStage = dataclasses.field(default_factory=LoraStage)
    distill: TextDistillStage = dataclasses.field(default_factory=TextDistillStage)

    def __post_init__(self) -> None:
        _check_task_job(self.trainer, self.methods, TEXT_METHODS, "text")


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
class VisionLoraStage(StageConfig):
    """The LoRA stage of a vision job: adapters on the frozen network's ungrouped convolutions, the head in full.

    Attributes:
        r: rank of the adapters.
        alpha: scaling numerator (the update is ``alpha / r * B A``).
        targets: ``auto`` (every 1x1 and full convolution but the head) or module names / dotted suffixes.
        dropout: dropout on the adapters' inputs.
    """

    r: int = 8
    alpha: float = 16.0
    targets: str | list[str] = "auto"
    dropout: float = 0.0


@dataclasses.dataclass
class VisionRecipeStage(StageConfig):
    """The :func:`warmstart.finetune.fine_tune` stage: ``freeze_epochs`` of linear probe, then every layer with layer decay.

    Attributes:
        select: let the recipe choose among its candidates on validation (about 3x the time of one fine-tune).
        freeze_epochs: epochs of the linear-probe warm-up (without ``select``).
        layer_decay: learning-rate decay per layer group from the head down.
        label_smoothing: of the cross-entropy.
    """

    select: bool = False
    freeze_epochs: int = 2
    layer_decay: float | None = 0.9
    label_smoothing: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_finetune_options(None, self.label_smoothing, "recipe.")
        if self.freeze_epochs < 0:
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
        importance: how pruning scores channels (see :func:`warmstart.compress.prune`).
        recovery_images: the unlabelled training images the pruned network is distilled on besides
            the labelled ones (the unpruned network labels them all; ``None``: every one; measured in
            ``bench/compress_lite.py``).
        quantize: int8 mode (``int8-static``: convolutions and the head in int8, compiled for x86).
        latency_batch: the batch size latency is measured at (median of repeated CPU calls).
    """

    enabled: bool = True
    ratio: float = 0.3
    importance: str = "magnitude"
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
    lora: VisionLoraStage = dataclasses.field(default_factory=VisionLoraStage)
    recipe: VisionRecipeStage = dataclasses.field(default_factory=VisionRecipeStage)
    distill: VisionDistillStage = dataclasses.field(default_factory=VisionDistillStage)
    compress: VisionCompressStage = dataclasses.field(default_factory=VisionCompressStage)

    def __post_init__(self) -> None:
        _check_task_job(self.trainer, self.methods, VISION_METHODS, "vision")
        if self.seeds is not None and (not self.seeds or len(set(self.seeds)) != len(self.seeds)):
            raise ConfigError(f"seeds must be a non-empty list of distinct seeds (or null: trainer.seed), got {self.seeds}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1 (or null: torch's default), got {self.threads}")


QUANTIZE_MODES = ("auto", "int8-weight", "int8-dynamic", "int8-static", "int8-dynamic-eager")
DEFAULT_COMPRESS_MODEL = ModelConfig(args={"width": 16})  # what configs/digits_transfer.yaml fine-tunes


@dataclasses.dataclass
class CompressJob:
    """``warmstart compress CONFIG``: the trained model made smaller and faster, beside a distilled student.

    Attributes:
        out_dir: the run folder (results.json, report.md, the compressed weights, a plot).
        trainer: trainer settings of the recovery training (``max_epochs``, ``seed``, ``device``, ...).
        data: the data the model was trained on; recovery distils on its whole training split
            without labels (the unpruned model labels it) and on its labels for the comparison.
        model: the trained model's architecture; ``weights`` its trained weights. Not given:
            ``small_cnn`` with ``width: 16`` (what ``configs/digits_transfer.yaml`` fine-tunes); a
            section given is taken as written, over the builder's own defaults (no width is added).
        weights: e.g. ``runs/digits_transfer/finetune/recipe/finetuned.safetensors``.
        student: a distilled student to compare with (``None`` to leave it out); ``student_weights``
            its weights (``runs/digits_transfer/distill/student_distilled/student.safetensors``).
        student_weights: the student's trained weights.
        ratio: share of the parameters pruning removes.
        importance: how pruning scores channels (see :func:`warmstart.compress.prune`).
        steps: prune in this many equal shares, each but the last followed by a short distillation
            (``trainer.max_epochs // steps`` epochs) from the unpruned model.
        global_pruning: rank channels across layers rather than the same share in each layer.
        optimizer: optimizer of the recovery training.
        scheduler: schedule of the recovery training.
        temperature: distillation temperature of the recovery.
        quantize: int8 mode for the recovered model (``auto`` times each on the CPU and keeps a faster one).
        qat_epochs: epochs of quantization-aware training after recovery (0: none): the pruned,
            distilled model trained with fake int8, distilling from its own float version, then
            converted to ``int8-static`` (x86 CPUs), reported beside the post-training row.
        qat_lr: learning rate of the quantization-aware training (the recovery optimizer otherwise).
        latency_batch: the batch size latency is measured at.
        export: write the quantized model as ``model.pt2`` (``torch.export``) and the pruned,
            distilled float model as ``model.onnx`` (with the ``deploy`` extra), and time each
            loaded in a fresh process without warmstart, beside the eager model.
    """

    out_dir: str = "runs/digits_compress"
    trainer: TrainerConfig = dataclasses.field(default_factory=lambda: TrainerConfig(max_epochs=15, seed=0))
    data: DataConfig = dataclasses.field(default_factory=lambda: DataConfig(name="digits", shots=10, val_per_class=10,
                                                                           batch_size=32, augment="digits"))
    model: ModelConfig | None = None  # None: DEFAULT_COMPRESS_MODEL (a partial section is not merged into it)
    weights: str = "runs/digits_transfer/finetune/recipe/finetuned.safetensors"
    student: ModelConfig | None = dataclasses.field(default_factory=lambda: ModelConfig(args={"width": 4}))
    student_weights: str | None = "runs/digits_transfer/distill/student_distilled/student.safetensors"
    ratio: float = 0.5
    importance: str = "magnitude"
    steps: int = 1
    global_pruning: bool = False
    optimizer: OptimizerConfig = dataclasses.field(default_factory=lambda: OptimizerConfig(lr=3e-3, weight_decay=0.01))
    scheduler: SchedulerConfig | None = dataclasses.field(default_factory=SchedulerConfig)
    temperature: float = 4.0
    quantize: str = "auto"
    qat_epochs: int = 0
    qat_lr: float = 3e-4
    latency_batch: int = 64
    export: bool = True

    def __post_init__(self) -> None:
        if self.model is None:
            self.model = dataclasses.replace(DEFAULT_COMPRESS_MODEL, args=dict(DEFAULT_COMPRESS_MODEL.args))
        from warmstart.compress._pruning import IMPORTANCES  # here: the compress package loads torch's models

        if self.importance not in IMPORTANCES:
            raise ConfigError(f"unknown importance '{self.importance}'{nearest(self.importance, IMPORTANCES)}; valid: "
                              f"{', '.join(IMPORTANCES)}")
        if self.latency_batch < 1:
            raise ConfigError(f"latency_batch is the batch size latency is measured at, >= 1; got {self.latency_batch}")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0 (the distillation temperature); got {self.temperature}")
        if not 0 < self.ratio < 1:
            raise ConfigError(f"ratio is the share of parameters pruning removes, in (0, 1); got {self.ratio}")
        if self.steps < 1:
            raise ConfigError(f"steps is how many shares pruning removes the ratio in, >= 1; got {self.steps}")
        if self.quantize not in QUANTIZE_MODES:
            raise ConfigError(f"quantize must be one of {', '.join(QUANTIZE_MODES)}, got '{self.quantize}'"
                              f"{nearest(str(self.quantize), QUANTIZE_MODES)}")
        if self.qat_epochs < 0 or self.qat_lr <= 0:
            raise ConfigError(f"qat_epochs must be >= 0 (0: no quantization-aware training) and qat_lr > 0; got "
                              f"{self.qat_epochs} and {self.qat_lr}")
        if self.trainer.out_dir is not None:
            raise ConfigError("warmstart compress takes the top-level out_dir, not trainer.out_dir")


@dataclasses.dataclass(frozen=True)
class Command:
    """One ``warmstart`` command (for ``run``, one ``task:`` of it): its schema, its runner, its help.

    Attributes:
        name: the command: ``warmstart NAME CONFIG``.
        schema: the job dataclass its YAML is read into.
        runner: ``"module:function"`` running a job of ``schema`` as ``runner(job, progress=...)``; imported
            by :meth:`load_runner` (the schemas import no torch).
        help: one line of help.
        example: the arguments after ``warmstart NAME`` in an example.
        task: the top-level ``task:`` value that selects this schema among the command's (``None``: the only one).
        stages: the sections whose ``trainer`` inherits the top-level ``trainer`` keys.
    """

    name: str
    schema: type
    runner: str
    help: str
    example: str
    task: str | None = None
    stages: tuple[str, ...] = ()

    def load_runner(self) -> Callable[..., Any]:
        """The runner function (imported now)."""
        module, _, function = self.runner.partition(":")
        return getattr(importlib.import_module(module), function)


# the one table of commands: the CLI's sub-commands, their help and examples, the schemas and the runners
COMMANDS: tuple[Command, ...] = (
    Command("pretrain", PretrainJob, "warmstart.jobs.stages:run_pretrain",
            "pretrain a model on a source data set (supervised, proximal or autoencoder)",
            "configs/pretrain.yaml trainer.max_epochs=3 optimizer.lr=1e-3 data.augment=digits"),
    Command("finetune", FinetuneJob, "warmstart.jobs.stages:run_finetune",
            "fine-tune pretrained weights on a new task with a fine-tuning method",
            "configs/finetune.yaml method=gradual proximal=1.0 data.shots=5"),
    Command("distill", DistillJob, "warmstart.jobs.stages:run_distill", "distil a trained teacher into a smaller student",
            "configs/distill.yaml temperature=2 alpha=0.5 trainer.max_epochs=5"),
    Command("run", PipelineJob, "warmstart.jobs.pipeline:run_pipeline",
            "the whole story: pretrain, fine-tune with every method, distil, and write a report",
            "configs/digits_transfer.yaml trainer.max_epochs=2 finetune.methods=[scratch,recipe] trainer.device=cuda",
            task="images", stages=("pretrain", "finetune", "distill")),
    Command("run", TextPipelineJob, "warmstart.jobs.text:run_text_pipeline",
            "task: text in the config: fine-tune a pretrained transformer, with LoRA, and distil it",
            "configs/text_sentiment.yaml lora.r=4 methods=[majority,lora] trainer.seed=1",
            task="text", stages=("probe", "finetune", "lora", "distill")),
    Command("run", VisionPipelineJob, "warmstart.jobs.vision:run_vision_pipeline",
            "task: vision in the config: an ImageNet network to few-shot animal shapes, distilled and compressed",
            "configs/vision_transfer.yaml data.shots=20 seeds=[0,1,2] methods=[linear_probe,full]",
            task="vision", stages=("probe", "finetune", "lora", "recipe", "distill", "compress")),
    Command("compress", CompressJob, "warmstart.jobs.compress:run_compress",
            "prune a trained model, recover it by distillation, quantize it to int8, and compare size and speed",
            "configs/digits_compress.yaml ratio=0.7 quantize=int8-weight trainer.max_epochs=5"),
)


def command_of(job: Any) -> Command:
    """The entry of :data:`COMMANDS` whose schema ``job`` is."""
    return next(command for command in COMMANDS if type(job) is command.schema)


def load_job(kind: str, path: str | Path | None, overrides: Sequence[str] = ()) -> Any:
    """Read the YAML file of a job of ``kind`` (``pretrain``, ``finetune``, ``distill``, ``run``) with overrides.

    For ``run``, a top-level ``task: text`` selects :class:`TextPipelineJob` (``task: images``, the
    default, :class:`PipelineJob`), and the top-level ``trainer`` section is merged into every
    stage's: the file's shared keys, then the file's stage keys, then the command line's shared
    keys, then its stage keys.

    Raises:
        ConfigError: unknown kind or task, missing file, invalid YAML, unknown keys or wrong types (named).
    """
    choices = [command for command in COMMANDS if command.name == kind]
    if not choices:
        names = dict.fromkeys(command.name for command in COMMANDS)
        raise ConfigError(f"unknown job '{kind}'{nearest(kind, names)}; valid: {', '.join(names)}")
    data = read_yaml(path) if path is not None else {}
    changes = parse_overrides(overrides)
    if kind == "finetune":
        data, changes = _renamed_finetune_keys(data, "the file"), _renamed_finetune_keys(changes, "the command line")
    merged = deep_merge(data, changes)
    command = _task_command(kind, choices, merged)
    for stage in command.stages:
        layers = [_section(data, "trainer"), _section(_section(data, stage), "trainer"),
                  _section(changes, "trainer"), _section(_section(changes, stage), "trainer")]
        if any(layers) and isinstance(merged.setdefault(stage, {}), dict):
            trainer: dict[str, Any] = {}
            for layer in layers:
                trainer = deep_merge(trainer, layer)
            merged[stage]["trainer"] = {k: v for k, v in trainer.items() if k != "out_dir"}
    return from_dict(command.schema, merged)


# a finetune job's keys before the fine-tuning method took the word ``method`` (``strategy`` is the parallelism)
RENAMED_FINETUNE_KEYS = {"strategy": "method", "strategy_args": "method_args"}


def _renamed_finetune_keys(values: dict[str, Any], where: str) -> dict[str, Any]:
    """``values`` with the deprecated top-level ``strategy``/``strategy_args`` keys read as ``method``/``method_args``."""
    if not isinstance(values, dict) or not any(old in values for old in RENAMED_FINETUNE_KEYS):
        return values
    values = dict(values)
    for old, new in RENAMED_FINETUNE_KEYS.items():
        if old not in values:
            continue
        if new in values:
            raise ConfigError(f"the finetune job sets both '{new}' and its deprecated spelling '{old}' in {where}; "
                              f"keep '{new}' ('trainer.strategy' is the parallelism)")
        warnings.warn(f"the finetune job key '{old}' (in {where}) is deprecated: use '{new}' ({new}: {values[old]}); "
                      "'trainer.strategy' is the parallelism", DeprecationWarning, stacklevel=3)
        values[new] = values.pop(old)
    return values


def _task_command(kind: str, choices: list[Command], merged: dict[str, Any]) -> Command:
    """The command a config's top-level ``task`` selects (the first by default); a ``task`` key its schema lacks is
    taken out (``task: images``: PipelineJob has no such key)."""
    if len(choices) == 1:
        return choices[0]
    tasks = {command.task: command for command in choices}
    task = merged.get("task", choices[0].task)
    if task not in tasks:
        raise ConfigError(f"unknown task '{task}' of warmstart {kind}{nearest(str(task), tasks)}; valid: "
                          f"{', '.join(map(str, tasks))} (" + "; ".join(f"task: {c.task}: {c.help}" for c in choices[1:])
                          + ")")
    if "task" not in {field.name for field in dataclasses.fields(tasks[task].schema)}:
        merged.pop("task", None)
    return tasks[task]


def _section(data: Any, key: str) -> dict[str, Any]:
    value = data.get(key) if isinstance(data, dict) else None
    return value if isinstance(value, dict) else {}


def _check_task_job(trainer: TrainerConfig, methods: list[str], valid: tuple[str, ...], task: str) -> None:
    """What the text and vision jobs check alike: the out_dir at the top level, and known method names."""
    if trainer.out_dir is not None:
        raise ConfigError("warmstart run takes the top-level out_dir, not trainer.out_dir")
    for method in methods:
        if method not in valid:
            raise ConfigError(f"unknown {task} method '{method}' in 'methods'{nearest(method, valid)}; valid: "
                              f"{', '.join(valid)}")
