"""CPU latency of eager PyTorch, the exported ``.pt2`` program and ONNX Runtime, float and int8, at batch 1 and 64.

Two networks with random weights (latency does not depend on them): ``small_cnn(width=16)`` on 28x28
images and ``mlp(784, [1024, 1024], 10)``. For each:

- float: eager; ``warmstart.compress.export`` to ``.pt2`` loaded back with ``torch.export.load``;
  ``export(format="onnx")`` run by ONNX Runtime.
- int8: ``quantize(model, "int8-static")`` in process (inductor's fused int8 kernels); the same
  model exported to ``.pt2`` and loaded back (torch's reference quantize/dequantize operators), and
  that program compiled by inductor with frozen weights, as a server would run it;
  ONNX Runtime's own quantizer on the float ONNX file, dynamic (``quantize_dynamic``, int8 weights)
  and static (``export(format="onnx-int8")``: QDQ, per-channel int8 weights, uint8 activations
  calibrated on the example batch).

Every variant is timed in each of ``--rounds`` interleaved rounds (median of ``--repeats`` calls),
and the median of the round medians is printed, with the load average (the machine may be shared).
torch and ONNX Runtime get the same number of threads (``--threads``, default 1). Prints a markdown table.

    python bench/export_latency.py              # about 3 minutes on 2 CPU cores
    python bench/export_latency.py --dry-run    # one round, two calls: checks that it runs
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from _timing import machine, timed
from torch import nn

from warmstart.compress import export, quantize
from warmstart.models import mlp, small_cnn


def ort_session(path: Path, threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x.numpy()})[0]


def ort_dynamic_int8(float_onnx: Path, folder: Path) -> Path:
    """ONNX Runtime's dynamic quantizer on the float file (int8 weights, activations quantized per call)."""
    from onnxruntime.quantization import QuantType, quant_pre_process, quantize_dynamic

    prepared = folder / "prepared.onnx"
    quant_pre_process(str(float_onnx), str(prepared))
    quantize_dynamic(str(prepared), str(folder / "dynamic.onnx"), weight_type=QuantType.QInt8)
    return folder / "dynamic.onnx"


def compiled_program(path: Path) -> Callable:
    """A loaded int8 program compiled by inductor with frozen weights: how a server gets the fused int8 kernels."""
    compiled = torch.compile(torch.export.load(path).module(), dynamic=False)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch._inductor.config.patch(freezing=True):
            return compiled(x)
    return run


def variants(model: nn.Module, example: torch.Tensor, folder: Path, threads: int) -> dict[str, Callable]:
    """Name -> callable on a batch, for every way of running ``model``."""
    model.eval()
    int8, _ = quantize(model, "int8-static", example, repeats=1)
    float_pt2 = torch.export.load(export(model, example, folder / "float.pt2")).module()
    int8_file = export(int8, example, folder / "int8.pt2")
    int8_pt2 = torch.export.load(int8_file).module()
    float_onnx = export(model, example, folder / "float.onnx", format="onnx")
    static_onnx = export(model, example, folder / "static.onnx", format="onnx-int8")  # calibrated on the example
    return {"float, eager": model, "float, .pt2": float_pt2, "float, ONNX Runtime": ort_session(float_onnx, threads),
            "int8-static, eager (inductor)": int8, "int8-static, .pt2": int8_pt2,
            "int8-static, .pt2 + torch.compile": compiled_program(int8_file),
            "int8 dynamic, ONNX Runtime": ort_session(ort_dynamic_int8(float_onnx, folder), threads),
            "int8 static (onnx-int8), ONNX Runtime": ort_session(static_onnx, threads)}


def interleaved(runs: dict[str, Callable], x: torch.Tensor, rounds: int, repeats: int) -> dict[str, float]:
    """Median over rounds of each variant's median ms per call; every round times every variant."""
    per_round: dict[str, list[float]] = {name: [] for name in runs}
    cpu = torch.device("cpu")
    with torch.no_grad():
        for run in runs.values():  # warm-up: a new batch shape compiles the inductor graph
            run(x), run(x)
        for _ in range(rounds):
            for name, run in runs.items():
                per_round[name].append(1e3 * statistics.median(timed(lambda: run(x), cpu) for _ in range(repeats)))
    return {name: statistics.median(values) for name, values in per_round.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and ONNX Runtime threads (1: steadier on a shared machine)")
    parser.add_argument("--dry-run", action="store_true", help="one round of two calls")
    args = parser.parse_args()
    rounds, repeats = (1, 2) if args.dry_run else (args.rounds, args.repeats)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    threads = args.threads
    networks = {"small_cnn(width=16), 28x28": (small_cnn(width=16), (1, 28, 28)),
                "mlp(784, [1024, 1024], 10)": (mlp(784, [1024, 1024], 10), (784,))}
    table = {}
    with tempfile.TemporaryDirectory() as tmp:
        for network, (model, shape) in networks.items():
            folder = Path(tmp) / network.split("(")[0]
            folder.mkdir()
            example = torch.randn(64, *shape)
            runs = variants(model, example, folder, threads)
            with torch.no_grad():  # the int8 files agree with the float model's predictions (a sanity check)
                reference = model(example).argmax(1)
                agree = {name: float((torch.as_tensor(np.asarray(run(example))).argmax(1) == reference).float().mean())
                         for name, run in runs.items()}
            for batch in (1, 64):
                table[(network, batch)] = interleaved(runs, example[:batch], rounds, repeats)
            table[(network, "agree")] = agree
    print(f"machine: {machine(torch.device('cpu'))}; load average {os.getloadavg()}")
    print(f"median ms per call, {rounds} interleaved rounds x {repeats} calls\n")
    names = list(next(iter(table.values())))
    print("| network | batch | " + " | ".join(names) + " |")
    print("|---|---:|" + "---:|" * len(names))
    for (network, batch), row in table.items():
        if batch == "agree":
            print(f"| {network} | same top-1 as float eager, batch 64 | "
                  + " | ".join(f"{100 * row[n]:.0f}%" for n in names) + " |")
        else:
            print(f"| {network} | {batch} | " + " | ".join(f"{row[n]:.3f}" for n in names) + " |")


if __name__ == "__main__":
    main()
