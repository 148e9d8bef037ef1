"""Load exported files in a fresh Python process that cannot import warmstart; time them and return their outputs."""

from __future__ import annotations

import dataclasses
import importlib
import io
import json
import os
import pickle
import shutil
import site
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import torch

from warmstart.errors import ConfigError

# Run with ``python -I -S``: no site-packages .pth files (so not the editable install of warmstart), no user site,
# no current directory; the interpreter's site-packages are put back on sys.path by hand.
_SCRIPT = r"""
import importlib, importlib.abc, importlib.util, json, statistics, sys, time, zipfile
config = json.load(open(sys.argv[1]))
sys.path.extend(config["site"])
found = importlib.util.find_spec("warmstart") is not None

class RefuseWarmstart(importlib.abc.MetaPathFinder):  # a file that needed warmstart would fail here, loudly
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "warmstart":
            raise ModuleNotFoundError("warmstart is not importable in this process", name=name)

sys.meta_path.insert(0, RefuseWarmstart())
import torch
torch.set_num_threads(config["threads"])
batches = torch.load(config["inputs"], weights_only=True)

def load_pt2(path):
    with zipfile.ZipFile(path) as archive:
        extra = [n for n in archive.namelist() if n.endswith("extra/warmstart.json")]
        needs = json.loads(archive.read(extra[0]))["needs"] if extra else []
    for module in needs:  # torchao registers the int8 operators the program calls
        importlib.import_module(module)
    module = torch.export.load(path).module()
    return lambda inputs: module(*inputs)

def load_onnx(path):
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = config["threads"]
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return lambda inputs: torch.from_numpy(session.run(None, {n: t.numpy() for n, t in zip(names, inputs)})[0])

results, outputs = {}, {}
for path in config["files"]:
    start = time.perf_counter()
    run = load_onnx(path) if path.endswith(".onnx") else load_pt2(path)
    loaded = time.perf_counter() - start
    with torch.no_grad():
        outputs[path] = [run(inputs) for inputs in batches]
        times = []
        for call in range(config["warmup"] + config["repeats"]):
            start = time.perf_counter()
            run(batches[0])
            times.append(time.perf_counter() - start)
    results[path] = {"latency_ms": 1e3 * statistics.median(times[config["warmup"]:]), "load_seconds": loaded,
                     "warmstart_found": found, "torchao_imported": "torchao" in sys.modules}
torch.save(outputs, config["outputs"])
json.dump(results, open(config["results"], "w"))
"""


@dataclasses.dataclass
class FreshRun:
    """One exported file, loaded and run in a process without warmstart.

    Attributes:
        outputs: the outputs on each input batch given, in order.
        latency_ms: median milliseconds of a call on the first batch.
        load_seconds: time to load the file (``torch.export.load`` or an ONNX Runtime session).
        warmstart_found: whether the process could have imported warmstart (``False``: it could not).
        torchao_imported: whether loading the file imported torchao (int8 programs need it).
    """

    outputs: list[torch.Tensor]
    latency_ms: float
    load_seconds: float
    warmstart_found: bool
    torchao_imported: bool


def run_in_fresh_process(files: Sequence[str | os.PathLike], inputs: Sequence[torch.Tensor | tuple[torch.Tensor, ...]],
                         *, repeats: int = 20, warmup: int = 3, threads: int | None = None,
                         timeout: float = 600) -> dict[str, FreshRun]:
    """Load ``.pt2``/``.onnx`` files in one fresh ``python -I -S`` process that cannot import warmstart, and run them.

    This is what a serving machine with only torch (and torchao, or onnxruntime) does: the
    process sees the interpreter's site-packages but not warmstart's editable install, and any
    import of warmstart fails. Each file is run on every batch of ``inputs`` (outputs returned)
    and timed on the first (median of ``repeats`` calls after ``warmup``).

    The process loads a ``.pt2`` file as a serving process does, with ``torch.export.load``,
    which unpickles some of its parts without torch's safe loader (pickled weights and constants,
    and sample inputs that the safe loader refused). So before the process starts, every pickled
    part of each ``.pt2`` file must load with ``torch.load(weights_only=True)`` (after importing
    the modules the file says it needs, such as torchao), and a file holding custom objects is
    refused: a crafted file is refused here instead of running code. The process then loads a
    copy of the file that was checked.

    Args:
        files: files written by :func:`export`.
        inputs: batches (a tensor, or a tuple of positional inputs) to run each file on.
        repeats: timed calls per file.
        warmup: untimed calls first.
        threads: torch and ONNX Runtime threads (default: this process's ``torch.get_num_threads()``).
        timeout: seconds before the process is stopped.

    Returns:
        ``{str(path): FreshRun}``.

    Raises:
        ConfigError: the process failed (its last lines of error output are given), or a ``.pt2``
            file holds a pickled part that torch's safe loader refuses, or custom objects.

    Examples:
        >>> from warmstart.models import mlp
        >>> path = export(mlp(16, [32], 3), torch.randn(4, 16), "/tmp/mlp.pt2")
        >>> run_in_fresh_process([path], [torch.randn(2, 16)])[str(path)].outputs[0].shape
        torch.Size([2, 3])
    """
    batches = [tuple(b) if isinstance(b, (tuple, list)) else (b,) for b in inputs]
    with tempfile.TemporaryDirectory(prefix="warmstart-fresh-") as folder:
        work = Path(folder)
        originals, files = [str(Path(f).resolve()) for f in files], []
        for index, original in enumerate(originals):  # the process loads the copy that was checked
            if not Path(original).is_file():
                raise ConfigError(f"run_in_fresh_process: {original} is not a file; pass files written by export()")
            copy = work / f"{index}-{Path(original).name}"
            shutil.copyfile(original, copy)
            if copy.suffix == ".pt2":
                check_pt2_unpickles_safely(copy, name=original)
            files.append(str(copy))
        torch.save([tuple(t.detach().cpu() for t in b) for b in batches], work / "inputs.pt")
        config = {"site": site.getsitepackages(), "files": files, "inputs": str(work / "inputs.pt"),
                  "outputs": str(work / "outputs.pt"), "results": str(work / "results.json"), "repeats": repeats,
                  "warmup": warmup, "threads": threads or torch.get_num_threads()}
        (work / "config.json").write_text(json.dumps(config))
        done = subprocess.run([sys.executable, "-I", "-S", "-c", _SCRIPT, str(work / "config.json")],
                              capture_output=True, text=True, timeout=timeout, cwd=folder)
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-8:])
            raise ConfigError(f"loading {', '.join(Path(f).name for f in originals)} in a fresh process (python -I -S, "
                              f"without warmstart) failed:\n{tail}")
        outputs = torch.load(work / "outputs.pt", weights_only=True)
        results = json.loads((work / "results.json").read_text())
    return {original: FreshRun(outputs[f], **results[f]) for original, f in zip(originals, files)}


def check_pt2_unpickles_safely(path: str | os.PathLike, name: str | os.PathLike | None = None) -> None:
    """Refuse a ``.pt2`` archive whose pickled parts torch's safe loader refuses, or that holds custom objects.

    ``torch.export.load`` unpickles pickled weights and constants without ``weights_only`` and
    falls back to full unpickling for sample inputs the safe loader refused. Parts that load with
    ``torch.load(weights_only=True)`` hold only what the safe loader allows, so loading them again
    either way builds the same tensors; anything else could run code and is refused here. The
    modules the file's ``warmstart.json`` says it needs (torchao, whose int8 tensors are pickled
    weights) are imported first, as the serving process does.

    Raises:
        ConfigError: naming the part and why.
    """
    shown = name or path
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            extra = [n for n in names if n.endswith("extra/warmstart.json")]
            for module in json.loads(archive.read(extra[0])).get("needs", []) if extra else []:
                importlib.import_module(module)
            pickled = [n for n in names if n.endswith(".pt") and "/sample_inputs/" in n]
            for config_name in (n for n in names if n.endswith(("model_weights_config.json",
                                                                 "model_constants_config.json"))):
                folder = config_name.rsplit("/", 1)[0]
                for key, part in json.loads(archive.read(config_name)).get("config", {}).items():
                    if "constants" in config_name and not str(part.get("path_name", "")).startswith("tensor_"):
                        raise ConfigError(f"{shown}: the program holds a custom object ({key}), which loading would "
                                          "run; warmstart loads only programs of tensors (export your own model)")
                    if part.get("use_pickle"):
                        pickled.append(f"{folder}/{part['path_name']}")
            for part in pickled:
                try:
                    torch.load(io.BytesIO(archive.read(part)), weights_only=True)
                except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, ValueError) as err:
                    raise ConfigError(f"{shown}: its part {part} holds Python objects that torch's safe loader "
                                      f"refuses, and torch.export.load would unpickle them in full (running code): "
                                      f"refused. Load only .pt2 files you exported. ({str(err).splitlines()[0]})"
                                      ) from None
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as err:
        raise ConfigError(f"{shown} is not a readable .pt2 archive ({err}); was it written by export()?") from None
