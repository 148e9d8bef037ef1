"""Config-driven jobs: typed schemas for pretrain, finetune, distill and the whole pipeline, and their runners."""

from warmstart.jobs.data import DataBundle, build_data
from warmstart.jobs.pipeline import run_pipeline
from warmstart.jobs.schema import (METHODS, DataConfig, DistillJob, DistillStage, FinetuneJob, FinetuneStage, ModelConfig,
                                   PipelineJob, PretrainJob, StageConfig, load_job)
from warmstart.jobs.stages import StageResult, build_job_model, build_trainer, run_distill, run_finetune, run_pretrain

__all__ = [
    "METHODS",
    "DataBundle",
    "DataConfig",
    "DistillJob",
    "DistillStage",
    "FinetuneJob",
    "FinetuneStage",
    "ModelConfig",
    "PipelineJob",
    "PretrainJob",
    "StageConfig",
    "StageResult",
    "build_data",
    "build_job_model",
    "build_trainer",
    "load_job",
    "run_distill",
    "run_finetune",
    "run_pipeline",
    "run_pretrain",
]
