"""The sections every job shares: data, model, a training stage, and the checks of their values."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from warmstart.config import OptimizerConfig, SchedulerConfig, TrainerConfig
from warmstart.errors import ConfigError, nearest

QUANTIZE_MODES = ("auto", "int8-weight", "int8-dynamic", "int8-static", "int8-dynamic-eager")
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
class LoraStage(StageConfig):
    """The LoRA stage of a transfer job: adapters on the frozen network, the head trained in full.

    Attributes:
        r: rank of the adapters.
        alpha: scaling numerator (the update is ``alpha / r * B A``).
        targets: ``auto`` (a transformer's attention and MLP layers; a convolutional network's
            ungrouped convolutions but the head) or module names / dotted suffixes.
        dropout: dropout on the adapters' inputs.
    """

    r: int = 8
    alpha: float = 16.0
    targets: str | list[str] = "auto"
    dropout: float = 0.05


def check_task_job(trainer: TrainerConfig, methods: list[str], valid: tuple[str, ...], task: str,
                   seeds: list[int] | None) -> None:
    """What the text and vision jobs check alike: the out_dir at the top level, known method names, distinct seeds."""
    if trainer.out_dir is not None:
        raise ConfigError("warmstart run takes the top-level out_dir, not trainer.out_dir")
    for method in methods:
        if method not in valid:
            raise ConfigError(f"unknown {task} method '{method}' in 'methods'{nearest(method, valid)}; valid: "
                              f"{', '.join(valid)}")
    if seeds is not None and (not seeds or len(set(seeds)) != len(seeds)):
        raise ConfigError(f"seeds must be a non-empty list of distinct seeds (or null: trainer.seed), got {seeds}")
