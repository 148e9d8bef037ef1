"""Config-driven jobs: each declares its methods (each beside its control) and stages into one runner and report.

``schema`` holds the YAML schemas and the table of commands (no torch); ``runner`` the skeleton every job
runs through and ``report`` what it writes; ``stages`` the single-stage commands (pretrain, finetune,
distill); ``digits``, ``text``, ``vision`` and ``compress`` the jobs. Runners are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from warmstart._lazy import lazy_namespace

_EXPORTS = {
    **{name: "warmstart.jobs.schema" for name in ("METHODS", "CompressJob", "DistillJob", "DistillStage",
                                                  "FinetuneJob", "FinetuneStage", "LoraStage", "PipelineJob",
                                                  "PretrainJob", "StageConfig", "TEXT_METHODS", "TextDataConfig",
                                                  "TextDistillStage", "TextPipelineJob", "VisionPipelineJob", "load_job")},
    **{name: "warmstart.jobs.stages" for name in ("StageResult", "build_job_model", "build_trainer", "run_distill",
                                                  "run_finetune", "run_pretrain")},
    **{name: "warmstart.jobs.runner" for name in ("JobRun", "Method", "Trained", "run_job")},
    "DataConfig": "warmstart.data.config",  # its home since the data builder moved into the library
    "ModelConfig": "warmstart.config",
    "run_pipeline": "warmstart.jobs.digits",
    "run_compress": "warmstart.jobs.compress",
    "run_text_pipeline": "warmstart.jobs.text",
    "run_vision_pipeline": "warmstart.jobs.vision",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_namespace(__name__, _EXPORTS)

if TYPE_CHECKING:
    from warmstart.config import ModelConfig
    from warmstart.data.config import DataConfig
    from warmstart.jobs.compress import run_compress
    from warmstart.jobs.digits import run_pipeline
    from warmstart.jobs.runner import JobRun, Method, Trained, run_job
    from warmstart.jobs.schema import (METHODS, TEXT_METHODS, CompressJob, DistillJob, DistillStage, FinetuneJob,
                                       FinetuneStage, LoraStage, PipelineJob, PretrainJob, StageConfig,
                                       TextDataConfig, TextDistillStage, TextPipelineJob, VisionPipelineJob, load_job)
    from warmstart.jobs.stages import (StageResult, build_job_model, build_trainer, run_distill, run_finetune,
                                       run_pretrain)
    from warmstart.jobs.text import run_text_pipeline
    from warmstart.jobs.vision import run_vision_pipeline
