"""The YAML schema of each job: dataclasses checked key by key (unknown keys and wrong types are errors).

One module per job (``single``: pretrain, finetune, distill; ``digits``: ``warmstart run``; ``text`` and
``vision``: its ``task: text`` and ``task: vision``; ``compress``), the shared sections in ``common`` and
the table of commands in ``commands``. Nothing here imports torch.
"""

from warmstart.jobs.schema.commands import COMMANDS, Command, command_of, load_job
from warmstart.jobs.schema.common import QUANTIZE_MODES, LoraStage, StageConfig
from warmstart.jobs.schema.compress import CompressJob
from warmstart.jobs.schema.digits import METHODS, DistillStage, FinetuneStage, PipelineJob
from warmstart.jobs.schema.single import DistillJob, FinetuneJob, PretrainJob
from warmstart.jobs.schema.text import TEXT_METHODS, TextDataConfig, TextDistillStage, TextPipelineJob
from warmstart.jobs.schema.vision import VISION_METHODS, VisionPipelineJob

__all__ = ["COMMANDS", "METHODS", "QUANTIZE_MODES", "TEXT_METHODS", "VISION_METHODS", "Command", "CompressJob",
           "DistillJob", "DistillStage", "FinetuneJob", "FinetuneStage", "LoraStage", "PipelineJob", "PretrainJob",
           "StageConfig", "TextDataConfig", "TextDistillStage", "TextPipelineJob", "VisionPipelineJob", "command_of",
           "load_job"]
