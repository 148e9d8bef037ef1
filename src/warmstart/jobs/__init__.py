"""Config-driven jobs: typed schemas for pretrain, finetune, distill and the pipelines (images, text), and their runners.

The schemas import no torch; runners are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from warmstart._lazy import lazy_namespace

_EXPORTS = {
    **{name: "warmstart.jobs.schema" for name in ("METHODS", "CompressJob", "DataConfig", "DistillJob", "DistillStage",
                                                  "FinetuneJob", "FinetuneStage", "LoraStage", "ModelConfig", "PipelineJob",
                                                  "PretrainJob", "StageConfig", "TEXT_METHODS", "TextDataConfig",
                                                  "TextDistillStage", "TextPipelineJob", "load_job")},
    **{name: "warmstart.jobs.data" for name in ("DataBundle", "build_data")},
    **{name: "warmstart.jobs.stages" for name in ("StageResult", "build_job_model", "build_trainer", "run_distill",
                                                  "run_finetune", "run_pretrain")},
    "run_pipeline": "warmstart.jobs.pipeline",
    "run_compress": "warmstart.jobs.compress",
    "run_text_pipeline": "warmstart.jobs.text",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_namespace(__name__, _EXPORTS)

if TYPE_CHECKING:
    from warmstart.jobs.compress import run_compress
    from warmstart.jobs.data import DataBundle, build_data
    from warmstart.jobs.pipeline import run_pipeline
    from warmstart.jobs.schema import (METHODS, TEXT_METHODS, CompressJob, DataConfig, DistillJob, DistillStage, FinetuneJob,
                                       FinetuneStage, LoraStage, ModelConfig, PipelineJob, PretrainJob, StageConfig,
                                       TextDataConfig, TextDistillStage, TextPipelineJob, load_job)
    from warmstart.jobs.stages import (StageResult, build_job_model, build_trainer, run_distill, run_finetune,
                                       run_pretrain)
    from warmstart.jobs.text import run_text_pipeline
