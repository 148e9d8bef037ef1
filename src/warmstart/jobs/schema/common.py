"""The sections every job shares: data, model, a training stage, and the checks of their values."""

from __future__ import annotations

import dataclasses

from warmstart.config import OptimizerConfig, SchedulerConfig, TrainerConfig
from warmstart.errors import ConfigError, nearest

QUANTIZE_MODES = ("auto", "int8-weight", "int8-dynamic", "int8-static", "int8-dynamic-eager")


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
