"""The one table of commands (schema, runner, help) and reading a job's YAML with its overrides."""

from __future__ import annotations

import dataclasses
import importlib
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from warmstart.config import deep_merge, from_dict, parse_overrides, read_yaml
from warmstart.errors import ConfigError, nearest
from warmstart.jobs.schema.compress import CompressJob
from warmstart.jobs.schema.digits import PipelineJob
from warmstart.jobs.schema.single import DistillJob, FinetuneJob, PretrainJob
from warmstart.jobs.schema.text import TextPipelineJob
from warmstart.jobs.schema.vision import VisionPipelineJob

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
    Command("run", PipelineJob, "warmstart.jobs.digits:run_pipeline",
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

