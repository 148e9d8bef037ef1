"""Typed config schema (dataclasses) and its YAML loader: unknown keys and wrong types are errors."""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from warmstart.errors import ConfigError, nearest

T = TypeVar("T")
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


STRATEGIES = ("auto", "ddp", "fsdp")


@dataclasses.dataclass
class FSDPConfig:
    """Options of ``strategy="fsdp"`` (the ``trainer.fsdp:`` section).

    Attributes:
        blocks: the modules sharded (and checkpointed) one by one: module classes, class names, or
            dotted module names (glob patterns such as ``"encoder.layer.*"``). ``None`` finds them:
            the outermost modules whose class occurs twice or more and holds layers of its own
            (transformer layers, ResNet blocks).
        cpu_offload: keep the sharded parameters, gradients and optimizer state in CPU memory
            (FSDP2's ``CPUOffloadPolicy``; the optimizer steps on the CPU). GPU only.
        reshard_after_forward: free the gathered parameters after each block's forward and gather
            them again for its backward (less memory, one more all-gather per block).
        reduce_fp32: under ``precision="bf16"``/``"16"``, reduce gradients in float32.

    Examples:
        >>> FSDPConfig(blocks=["layers.*"]).blocks
        ['layers.*']
    """

    blocks: list[Any] | None = None
    cpu_offload: bool = False
    reshard_after_forward: bool = True
    reduce_fp32: bool = True

    def __post_init__(self) -> None:
        if self.blocks is not None:
            if isinstance(self.blocks, (str, type)):
                self.blocks = [self.blocks]
            wrong = [b for b in self.blocks if not isinstance(b, (str, type))]
            if wrong:
                raise ConfigError(f"fsdp blocks must be module classes, class names or dotted module names, got {wrong[0]!r}")
            # classes are kept by name, so that the config stays plain data (YAML, checkpoints)
            self.blocks = [b if isinstance(b, str) else b.__name__ for b in self.blocks]


@dataclasses.dataclass
class TrainerConfig:
    """Options of :class:`warmstart.Trainer` (the ``trainer:`` section of a config file).

    Attributes:
        max_epochs: epochs to train. ``None``: 1, or as many as ``max_steps`` needs when that is set.
        max_steps: stop after this many optimizer steps (``None``: no limit). With both set,
            training stops at whichever comes first, and a schedule is planned over the steps
            that will run.
        precision: ``"32"``, ``"bf16"`` (bfloat16 autocast, also on CPU) or ``"16"`` (float16
            autocast with a GradScaler, GPU only); YAML's unquoted ``32`` and ``16`` are accepted.
        device: ``"auto"`` (cuda, then mps, then cpu) or a torch device string.
        out_dir: folder for checkpoints and logs; ``None`` writes nothing.
        progress: print progress (a bar on a terminal, plain lines otherwise).
        seed: seeds Python, NumPy and torch at the start of a fresh fit. ``None`` draws the seed
            from torch's global generator, so the caller's ``torch.manual_seed`` decides the run;
            the seed used is recorded in ``trainer.seed``, the saved config and checkpoints.
        accumulate: micro-batches per optimizer step (gradient accumulation).
        grad_clip: clip the gradient norm to this value (``None``: no clipping).
        log_every: read losses from the device and log every this many optimizer steps.
        nonfinite: ``"error"`` raises on a NaN/inf loss at the next log; ``"skip"`` skips such
            steps instead (this checks every step, which costs one host sync per step).
        compile: wrap the model in ``torch.compile``: ``True`` for the default (inductor) backend,
            or a backend name such as ``"eager"`` or ``"aot_eager"``.
        channels_last: use the channels-last memory layout for the model and 4-D inputs.
        save_every: also checkpoint every this many optimizer steps within an epoch.
        checkpoint: write ``last.pt`` and ``last.safetensors`` to ``out_dir`` every epoch (under
            ``strategy="fsdp"``: the sharded folder ``last.dcp`` and ``last.safetensors``).
        strategy: ``"auto"`` / ``"ddp"``: one replica per process, DDP under ``torchrun``;
            ``"fsdp"``: shard parameters, gradients and optimizer state over the processes (FSDP2).
        fsdp: the options of ``strategy="fsdp"`` (:class:`FSDPConfig`).
        activation_checkpointing: recompute each block's activations in the backward pass instead
            of keeping them (the blocks of ``fsdp.blocks``, or found automatically; any strategy).
        overwrite: let a fresh run replace an earlier run's checkpoints and logs in ``out_dir``;
            without it such a run is refused (:class:`warmstart.errors.RunExistsError`): continue
            it with ``resume="last"`` or choose another ``out_dir``.
        threads: torch's intra-op CPU threads while ``fit`` and ``evaluate`` run on the CPU (torch's
            setting comes back afterwards). ``"auto"`` (default) takes the cores that other work
            leaves free when the call starts (CPU affinity, cgroup quota and the kernel's count of
            running threads; at least 1, never more than torch's setting), so that beside other work
            a run slows by its share of the cores rather than several times (``bench/busy.py``); on
            a quiet machine that is torch's setting. A number sets that many; ``None`` leaves
            torch's setting (the choice off). The count used is recorded in ``config.yaml``
            (``trainer.threads_used``): float sums split differently with another count, so set a
            number to reproduce a run bit for bit on a machine whose load changes.
    """

    max_epochs: int | None = None
    max_steps: int | None = None
    precision: str | int = "32"
    device: str = "auto"
    out_dir: str | None = None
    progress: bool = True
    seed: int | None = None
    accumulate: int = 1
    grad_clip: float | None = None
    log_every: int = 50
    nonfinite: Literal["error", "skip"] = "error"
    compile: bool | str = False
    channels_last: bool = False
    save_every: int | None = None
    checkpoint: bool = True
    strategy: str = "auto"
    fsdp: FSDPConfig = dataclasses.field(default_factory=FSDPConfig)
    activation_checkpointing: bool = False
    overwrite: bool = False
    threads: int | str | None = "auto"

    def __post_init__(self) -> None:
        self.precision = normalize_precision(self.precision)
        check_threads(self.threads, "trainer option 'threads'")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown strategy {self.strategy!r}{nearest(str(self.strategy), STRATEGIES)}; use 'auto' "
                              "or 'ddp' (a full replica per process, DDP under torchrun) or 'fsdp' (parameters, "
                              "gradients and optimizer state sharded over the processes)")
        if isinstance(self.fsdp, Mapping):  # TrainerConfig(fsdp={...}) written directly
            self.fsdp = from_dict(FSDPConfig, self.fsdp, prefix="trainer.fsdp")
        for name in ("max_epochs", "accumulate", "log_every", "max_steps", "save_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"trainer option '{name}' must be >= 1, got {value}"
                                  + (" (None means no limit)" if name == "max_steps" else ""))
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"grad_clip must be positive or None, got {self.grad_clip}")

    @property
    def epochs(self) -> int | None:
        """The epoch limit in force: ``max_epochs``, else 1 without ``max_steps``, else none (``None``)."""
        if self.max_epochs is not None:
            return self.max_epochs
        return 1 if self.max_steps is None else None


def check_threads(setting: int | str | None, name: str = "threads") -> None:
    """Refuse a threads setting other than ``None``, ``"auto"`` or a whole number >= 1, naming the choices."""
    if not (setting is None or setting == "auto"
            or (isinstance(setting, int) and not isinstance(setting, bool) and setting >= 1)):
        raise ConfigError(f"{name} must be None (torch's setting), 'auto' (the cores other work leaves free) or a "
                          f"whole number >= 1, got {setting!r}")


PRECISIONS = ("32", "bf16", "16")
_PRECISION_ALIASES = {"fp32": "32", "32-true": "32", "bf16-mixed": "bf16", "fp16": "16", "16-mixed": "16"}


def normalize_precision(precision: str | int) -> str:
    """``"32"``, ``"bf16"`` or ``"16"`` from a precision name, alias or YAML number (``32``, ``16``).

    Raises:
        ConfigError: an unknown precision (with the nearest valid one).
    """
    text = str(precision).strip().lower()
    text = _PRECISION_ALIASES.get(text, text)
    if text not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}{nearest(text, PRECISIONS)}; use one of '32', 'bf16' "
                          "(bfloat16 autocast) or '16' (float16 autocast with loss scaling)")
    return text


@dataclasses.dataclass
class OptimizerConfig:
    """An optimizer by name (see :func:`warmstart.optim.build_optimizer`); ``None`` keeps PyTorch's default."""

    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float | None = None
    nesterov: bool | None = None
    betas: list[float] | None = None
    eps: float | None = None

    def __post_init__(self) -> None:
        if self.betas is not None and len(self.betas) != 2:
            raise ConfigError(f"optimizer betas must be two numbers [beta1, beta2], e.g. [0.9, 0.999]; got {self.betas}")
        if self.lr <= 0 or self.lr != self.lr:
            raise ConfigError(f"optimizer lr must be a positive number, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"optimizer weight_decay must be >= 0, got {self.weight_decay}")


@dataclasses.dataclass
class SchedulerConfig:
    """A learning-rate schedule by name (see :func:`warmstart.optim.build_scheduler`)."""

    name: str = "cosine"
    warmup_steps: int = 0
    warmup_epochs: float = 0.0
    warmup_start_factor: float = 0.0
    min_lr_ratio: float = 0.0
    step_size: int = 30
    gamma: float = 0.1
    patience: int = 10
    factor: float = 0.1
    mode: Literal["min", "max"] = "min"
    monitor: str = "val_loss"


# ---------------------------------------------------------------------------------------------
# Validation: dict -> dataclass, naming the key and the nearest valid one on error.


@dataclasses.dataclass
class ModelConfig:
    """A model by name (``small_cnn``, ``mlp``, ``resnet18_small`` or any torchvision model) and its arguments.

    ``num_classes`` and ``in_channels`` are filled in from the data unless given in ``args``
    (:func:`warmstart.models.build_model_for`).

    Attributes:
        name: the model's name (:data:`warmstart.models.MODELS` or a torchvision model).
        args: its builder's keyword arguments.
    """

    name: str = "small_cnn"
    args: dict[str, Any] = dataclasses.field(default_factory=dict)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return f"a mapping ({tp.__name__})"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it converted (int -> float only)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        for arm in args:
            try:
                return _coerce(value, arm, key)
            except ConfigError:
                continue
        raise _type_error(key, tp, value)
    if origin is Literal:
        if str(value) in [str(a) for a in args] and not isinstance(value, (bool, list, dict)):
            return type(args[0])(value)
        raise ConfigError(f"config key '{key}' must be {_type_name(tp)}, got {value!r}{nearest(str(value), [str(a) for a in args])}")
    if tp is type(None):
        if value is None:
            return None
        raise _type_error(key, tp, value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise _type_error(key, tp, value)
        return from_dict(tp, value, prefix=key)
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _type_error(key, tp, value)
        item = args[0] if args else Any
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise _type_error(key, tp, value)
        item = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(v, item, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _type_error(key, tp, value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _type_error(key, tp, value)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):  # YAML 1.1 reads 1e-3 as a string
            return float(value)
        raise _type_error(key, tp, value)
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):  # a pathlib.Path for a path option (out_dir=Path(...))
            return os.fspath(value)
        raise _type_error(key, tp, value)
    return value


def _type_error(key: str, tp: Any, value: Any) -> ConfigError:
    return ConfigError(f"config key '{key}' must be {_type_name(tp)}, got {type(value).__name__} {value!r}")


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Build the dataclass ``cls`` from a mapping, checking every key and type.

    Args:
        cls: the dataclass (the schema).
        data: values, e.g. a section of a YAML file.
        prefix: dotted path of ``data`` for error messages.

    Returns:
        The validated instance.

    Raises:
        ConfigError: an unknown key (named, with the nearest valid key) or a value of the wrong type.

    Examples:
        >>> from_dict(TrainerConfig, {"max_epochs": 3}).max_epochs
        3
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"config section '{prefix or cls.__name__}' must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    names = list(fields)
    values = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(f"unknown config key '{full}'{_hint(str(key), names, prefix)}; valid keys here: "
                              f"{', '.join(names)}")
        values[key] = _coerce(_onto_default(fields[key], value), hints[key], full)
    try:
        return cls(**values)
    except TypeError as err:  # a required field is missing
        raise ConfigError(f"config section '{prefix or cls.__name__}': {err}") from None


# keys people reach for that live one level down in every job's schema: the error names the right place
KEY_HINTS = {"epochs": "trainer.max_epochs", "max_epochs": "trainer.max_epochs", "max_steps": "trainer.max_steps",
             "seed": "trainer.seed", "device": "trainer.device", "precision": "trainer.precision",
             "lr": "optimizer.lr", "learning_rate": "optimizer.lr", "weight_decay": "optimizer.weight_decay",
             "batch_size": "data.batch_size"}


def _hint(key: str, names: list[str], prefix: str) -> str:
    hinted = KEY_HINTS.get(key)
    if hinted is not None and hinted.split(".")[0] in names:
        return f" (did you mean '{prefix + '.' if prefix else ''}{hinted}'?)"
    return nearest(key, names)


def _onto_default(field: dataclasses.Field, value: Any) -> Any:
    """A partial section is laid over the field's default section (``target: {shots: 3}`` keeps its ``name``)."""
    factory = field.default_factory
    if not isinstance(value, Mapping) or factory is dataclasses.MISSING:
        return value
    default = factory()
    return deep_merge(to_dict(default), value) if dataclasses.is_dataclass(default) else value


def to_dict(config: Any) -> dict[str, Any]:
    """Return a dataclass config as plain dicts and lists (what YAML and checkpoints store)."""
    return dataclasses.asdict(config)


def merge_options(config: T, options: Mapping[str, Any], prefix: str = "") -> T:
    """Return a copy of dataclass ``config`` with ``options`` applied, validated like a config file."""
    merged = {**to_dict(config), **options}
    return from_dict(type(config), merged, prefix=prefix)


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """Turn ``["trainer.max_epochs=3", "optimizer.lr=1e-3"]`` into a nested dict.

    Values are parsed as YAML scalars (``3`` is an int, ``true`` a bool, ``[1, 2]`` a list).

    Raises:
        ConfigError: an override without ``=``.
    """
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key.sub=value")
        key, raw = item.split("=", 1)
        value = _override_value(item, raw)
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}' sets a key inside '{part}', which is not a section")
        node[parts[-1]] = value
    return nested


def _override_value(item: str, raw: str) -> Any:
    """Parse an override's value as a YAML scalar or flow collection; tags and syntax errors are ConfigErrors."""
    if not raw.strip():
        return ""
    if raw.lstrip().startswith("!"):
        raise ConfigError(f"override '{item}': YAML tags ('{raw.split()[0]}') are not allowed in configs; nothing in a "
                          "config runs code. Give a plain value (quote it if it starts with '!').")
    if raw.strip() in ("None", "none"):  # Python's spelling of null: out_dir=None must not become a folder 'None'
        return None
    try:
        return safe_yaml(raw, f"override '{item}'")
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"override '{item}' has a value that is not valid YAML ({problem}); write lists as [1, 2], "
                          "mappings as {a: 1}, and quote strings with special characters") from None


MAX_YAML_NODES = 100_000  # a config holds hundreds of values: more, counted with aliases expanded, is an alias bomb


class _ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (the last would win without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"key '{key}' is given twice in one section (lines {seen[key] + 1} and "
                                  f"{key_node.start_mark.line + 1}); the second would silently win: keep one")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def safe_yaml(text: str, where: str) -> Any:
    """Parse YAML text as data: no tags, no key twice in a mapping, at most :data:`MAX_YAML_NODES` values.

    Aliases are counted as what they expand to, so a file of nested aliases (a few lines that
    expand to millions of values) is refused before anything walks it.

    Raises:
        ConfigError: a duplicate key or too many values; ``yaml.YAMLError`` for invalid YAML.
    """
    data = yaml.load(text, Loader=_ConfigLoader)  # noqa: S506  (a SafeLoader subclass)
    size = _expanded_size(data, {})
    if size > MAX_YAML_NODES:
        raise ConfigError(f"{where} expands to {size:,} values (its anchors and aliases repeat sections inside each "
                          f"other); a config holds far fewer (at most {MAX_YAML_NODES:,}): write the values out, "
                          "without aliases")
    return data


def _expanded_size(value: Any, sizes: dict[int, int]) -> int:
    """Values in ``value`` counting every alias as a copy (each shared object sized once, so this is quick).

    Raises:
        ConfigError: a section that contains itself (a recursive alias): nothing could walk it to its end.
    """
    if not isinstance(value, (dict, list)):
        return 1
    if sizes.get(id(value)) == -1:
        raise ConfigError("a section of the config contains itself (a recursive alias); write the values out")
    if id(value) not in sizes:
        sizes[id(value)] = -1  # being sized
        items = value.values() if isinstance(value, dict) else value
        sizes[id(value)] = 1 + sum(_expanded_size(item, sizes) for item in items)
    return sizes[id(value)]


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``update`` into ``base`` recursively (``update`` wins)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _yaml_problem(path: Path, err: yaml.YAMLError) -> str:
    """One line naming where a YAML file is wrong and how to fix the usual causes (tabs, tags)."""
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    if "\\t" in problem:  # PyYAML names a tab by the two characters backslash and t
        fix = "YAML indents with spaces, not tabs: replace the tab with spaces"
    elif "tag" in problem:
        fix = "YAML tags (!name) are not allowed in configs: nothing in a config runs code"
    else:
        fix = "check the indentation and quote values with special characters"
    return f"config file '{path}' is not valid YAML{where} ({problem}): {fix}"


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with ``yaml.safe_load`` (no tags, nothing runs).

    Raises:
        ConfigError: missing file, invalid YAML, or a top level that is not a mapping.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config path '{path}' is a directory, not a YAML file; give the file, e.g. {path}/job.yaml")
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    try:
        data = safe_yaml(path.read_text(), f"config file '{path}'")
    except yaml.YAMLError as err:
        raise ConfigError(_yaml_problem(path, err)) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read config file '{path}': {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping at the top level, got {type(data).__name__}")
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Load a YAML config file into the schema ``cls``, applying ``key.sub=value`` overrides.

    Examples:
        >>> cfg = load_config(TrainerConfig, None, ["max_epochs=2", "precision=bf16"])
        >>> cfg.max_epochs, cfg.precision
        (2, 'bf16')
    """
    data = read_yaml(path) if path is not None else {}
    return from_dict(cls, deep_merge(data, parse_overrides(overrides)))


def save_config(config: Any, path: str | Path) -> Path:
    """Write a (resolved) config as YAML."""
    from warmstart.checkpoint import atomic_path

    data = to_dict(config) if dataclasses.is_dataclass(config) else dict(config)
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    return Path(path)
