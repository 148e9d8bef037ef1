"""The ``warmstart`` command: ``warmstart pretrain|finetune|distill|run|compress CONFIG [key=value ...]``."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import warnings
from collections.abc import Sequence

from warmstart.errors import WarmstartError

COMMANDS = {
    "pretrain": "pretrain a model on a source data set (supervised, proximal or autoencoder)",
    "finetune": "fine-tune pretrained weights on a new task with a fine-tuning method",
    "distill": "distil a trained teacher into a smaller student",
    "run": "the whole story: pretrain, fine-tune with every method, distil, and write a report (task: text in the "
           "config: fine-tune a pretrained transformer, with LoRA, and distil it)",
    "compress": "prune a trained model, recover it by distillation, quantize it to int8, and compare size and speed",
}

EXAMPLES = {
    "pretrain": "configs/pretrain.yaml trainer.max_epochs=3 optimizer.lr=1e-3 data.augment=digits",
    "finetune": "configs/finetune.yaml method=gradual proximal=1.0 data.shots=5",
    "distill": "configs/distill.yaml temperature=2 alpha=0.5 trainer.max_epochs=5",
    "run": "configs/digits_transfer.yaml trainer.max_epochs=2 finetune.methods=[scratch,recipe] trainer.device=cuda\n"
           "  warmstart run configs/text_sentiment.yaml lora.r=4 methods=[majority,lora] trainer.seed=1",
    "compress": "configs/digits_compress.yaml ratio=0.7 quantize=int8-weight trainer.max_epochs=5",
}

EPILOG = """\
Overrides use dotted keys and YAML values, e.g.
  warmstart {cmd} {example}
Unknown keys and wrong types are errors that name the key and the nearest valid one.
The resolved config is written into the run folder (job.yaml: run it again with
  warmstart {cmd} RUN_FOLDER/job.yaml) and into every checkpoint (and config.yaml).
A run folder that holds an earlier run is refused (the earlier run is never replaced unasked):
choose another folder, or pass --overwrite to replace that run's files.
Top-level keys: {keys}"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, one sub-command per job."""
    from warmstart.jobs.schema import JOBS, TextPipelineJob

    parser = argparse.ArgumentParser(prog="warmstart", description="Pretrain, fine-tune and distil PyTorch networks.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="{pretrain,finetune,distill,run,compress}", required=True)
    for name, help_text in COMMANDS.items():
        keys = ", ".join(f.name for f in dataclasses.fields(JOBS[name]))
        if name == "run":
            keys += "; with task: text, " + ", ".join(f.name for f in dataclasses.fields(TextPipelineJob))
        cmd = sub.add_parser(name, help=help_text, description=help_text,
                             epilog=EPILOG.format(cmd=name, example=EXAMPLES[name], keys=keys),
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        cmd.add_argument("config", nargs="?", help="YAML config file (omit to use the defaults)")
        cmd.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
        cmd.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
        cmd.add_argument("--quiet", action="store_true", help="no progress output")
        cmd.add_argument("--overwrite", action="store_true",
                         help="replace an earlier run in the run folder (its checkpoints, logs and results; the "
                              "folder's other files stay); without it such a run is refused")
    return parser


def _version() -> str:
    from warmstart import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``warmstart`` console script and ``python -m warmstart``; returns the exit code."""
    args = build_parser().parse_args(argv)
    # a deprecated spelling in a config file warns from warmstart's own modules, which Python hides by default
    warnings.filterwarnings("default", category=DeprecationWarning, module=r"warmstart(\.|$)")
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config:  # no file, only overrides
        config, overrides = None, [config, *overrides]
    try:
        if args.overwrite:  # the jobs pass it on to every trainer they build (a pipeline's stages too)
            overrides.append("trainer.overwrite=true")
        return _run(args.command, config, overrides, args.print_config, args.quiet)
    except WarmstartError as err:
        print(f"warmstart {args.command}: error: {err}", file=sys.stderr)
        return 2


def _run(command: str, config: str | None, overrides: list[str], print_config: bool, quiet: bool) -> int:
    import yaml

    from warmstart.config import to_dict
    from warmstart.jobs import TextPipelineJob, load_job, run_distill, run_finetune, run_pipeline, run_pretrain
    from warmstart.jobs import run_text_pipeline

    job = load_job(command, config, overrides)
    if print_config:
        print(yaml.safe_dump(to_dict(job), sort_keys=False), end="")
        return 0
    if command == "run":
        (run_text_pipeline if isinstance(job, TextPipelineJob) else run_pipeline)(job, progress=not quiet)
        return 0
    if command == "compress":
        from warmstart.jobs.compress import run_compress

        run_compress(job, progress=not quiet)
        print(f"[warmstart compress] wrote {job.out_dir}")
        return 0
    if quiet:
        job.trainer.progress = False
    runner = {"pretrain": run_pretrain, "finetune": run_finetune, "distill": run_distill}[command]
    summary = runner(job).summary()
    print(f"[warmstart {command}] " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                for k, v in summary.items()))
    if job.trainer.out_dir is not None:
        print(f"[warmstart {command}] wrote {job.trainer.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
