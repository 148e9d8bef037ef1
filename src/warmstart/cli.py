"""The ``warmstart`` command: ``warmstart pretrain|finetune|distill|run|compress CONFIG [key=value ...]``."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import sys
import warnings
from collections.abc import Sequence

from warmstart._openmp import hold_up_under_load
from warmstart.errors import ConfigError, WarmstartError

EPILOG = """\
Overrides use dotted keys and YAML values, e.g.
  warmstart {cmd} {example}
Unknown keys and wrong types are errors that name the key and the nearest valid one.
The resolved config is written into the run folder (job.yaml: run it again with
  warmstart {cmd} RUN_FOLDER/job.yaml) and into every checkpoint (and config.yaml).
A run folder that holds an earlier run is refused (the earlier run is never replaced unasked):
choose another folder, pass --resume to continue it (pretrain, finetune, distill, and run without
a task: the digits story), or --overwrite to replace that run's files.
Top-level keys: {keys}"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: one sub-command per name in :data:`warmstart.jobs.schema.COMMANDS`."""
    from warmstart.jobs.schema import COMMANDS

    names = list(dict.fromkeys(command.name for command in COMMANDS))
    parser = argparse.ArgumentParser(prog="warmstart", description="Pretrain, fine-tune and distil PyTorch networks.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(names) + "}", required=True)
    for name in names:
        entries = [command for command in COMMANDS if command.name == name]  # run: one per task
        help_text = entries[0].help + "".join(f" ({entry.help})" for entry in entries[1:])
        keys = "; ".join((f"with task: {entry.task}, " if i else "")
                         + ", ".join(field.name for field in dataclasses.fields(entry.schema))
                         for i, entry in enumerate(entries))
        example = f"\n  warmstart {name} ".join(entry.example for entry in entries)
        cmd = sub.add_parser(name, help=help_text, description=help_text,
                             epilog=EPILOG.format(cmd=name, example=example, keys=keys),
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        cmd.add_argument("config", nargs="?", help="YAML config file (omit to use the defaults)")
        cmd.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
        cmd.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
        cmd.add_argument("--quiet", action="store_true", help="no progress output")
        cmd.add_argument("--overwrite", action="store_true",
                         help="replace an earlier run in the run folder (its checkpoints, logs and results; the "
                              "folder's other files stay); without it such a run is refused")
        cmd.add_argument("--resume", action="store_true",
                         help="continue the run in the run folder from its last checkpoint (a run that was "
                              "stopped or killed), with the same config")
    return parser


def _version() -> str:
    from warmstart import __version__

    return __version__


def _names_a_file(config: str) -> bool:
    """A config argument with '=' in it is still a file path when it names a file or a YAML file's name."""
    from pathlib import Path

    return Path(config).is_file() or config.endswith((".yaml", ".yml"))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``warmstart`` console script and ``python -m warmstart``; returns the exit code."""
    hold_up_under_load()  # before anything loads torch
    args = build_parser().parse_args(argv)
    # a deprecated spelling in a config file warns from warmstart's own modules, which Python hides by default
    warnings.filterwarnings("default", category=DeprecationWarning, module=r"warmstart(\.|$)")
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not _names_a_file(config):  # no file, only overrides
        config, overrides = None, [config, *overrides]
    try:
        if args.overwrite:  # the jobs pass it on to every trainer they build (a pipeline's stages too)
            overrides.append("trainer.overwrite=true")
        if args.resume and args.overwrite:
            raise ConfigError("--resume continues the run in the folder and --overwrite replaces it: pass one of them")
        return _run(args.command, config, overrides, args.print_config, args.quiet, args.resume)
    except WarmstartError as err:
        print(f"warmstart {args.command}: error: {err}", file=sys.stderr)
        return 2


def _run(command: str, config: str | None, overrides: list[str], print_config: bool, quiet: bool,
         resume: bool = False) -> int:
    import yaml

    from warmstart.config import to_dict
    from warmstart.jobs.schema import command_of, load_job

    job = load_job(command, config, overrides)
    if print_config:
        print(yaml.safe_dump(to_dict(job), sort_keys=False), end="")
        return 0
    runner = command_of(job).load_runner()
    if resume and "resume" not in inspect.signature(runner).parameters:
        raise ConfigError(f"--resume continues warmstart pretrain, finetune and distill runs and the digits story "
                          f"(warmstart run without a task); this '{command}' job cannot continue yet: run it again into "
                          "another folder, or with --overwrite")
    result = runner(job, progress=not quiet, **({"resume": True} if resume else {}))
    summary = getattr(result, "summary", None)  # a single stage's StageResult; the pipelines print their own tables
    if callable(summary):
        print(f"[warmstart {command}] " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                    for k, v in summary().items()))
    out = getattr(job, "out_dir", None) or job.trainer.out_dir
    if out is not None:
        print(f"[warmstart {command}] wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
