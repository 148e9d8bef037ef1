"""Config-driven jobs: typed schemas for pretrain, finetune, distill and the whole pipeline, and their runners."""

from warmstart.jobs.data import DataBundle, build_data
from warmstart.jobs.pipeline import run_pipeline
from warmstart.jobs.run import run_distill, run_finetune, run_pretrain
from warmstart.jobs.schema import (DataConfig, DistillJob, FinetuneJob, ModelConfig, PipelineJob, PretrainJob,
                                   load_job)

__all__ = [
    "DataBundle",
    "DataConfig",
    "DistillJob",
    "FinetuneJob",
    "ModelConfig",
    "PipelineJob",
    "PretrainJob",
    "build_data",
    "load_job",
    "run_distill",
    "run_finetune",
    "run_pipeline",
    "run_pretrain",
]
