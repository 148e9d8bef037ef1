"""``warmstart compress``: a trained model pruned, recovered, quantized and exported."""

from __future__ import annotations

import dataclasses

from warmstart.config import OptimizerConfig, SchedulerConfig, TrainerConfig
from warmstart.errors import ConfigError, nearest
from warmstart.config import ModelConfig
from warmstart.data.config import DataConfig
from warmstart.jobs.schema.common import QUANTIZE_MODES

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
        from warmstart.compress import IMPORTANCES  # here: the compress package loads torch's models

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

