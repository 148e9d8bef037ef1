"""Compress a trained CNN: prune half its channels, recover it, make it int8, and save and reload it.

The model is ``small_cnn(width=16)`` trained on the 899 UCI training digits (28x28). Then:

1. ``prune(model, example, ratio=0.5)``: torch-pruning removes whole channels (half the parameters),
   so the network is really smaller and faster, and the report lists every layer's widths.
2. ``recover(pruned, train, val, teacher=model, method="auto")``: a copy is fine-tuned on the labels,
   another distilled from the unpruned model, each scored on 20% of the training labels held out
   (never the test digits); fine-tuning is kept unless distillation beats it by more than the
   standard error, and the choice then trains the pruned model.
3. ``save_compressed`` / ``load_compressed``: the pruned shapes go into the safetensors metadata and
   are rebuilt on a fresh ``small_cnn(width=16)``.
4. ``quantize(pruned, "auto", example)``: each int8 mode is timed on this CPU and the fastest kept if it
   beats float by 10%; with ``--qat-epochs N``, quantization-aware training (``prepare_qat``, N epochs
   distilling from the float pruned model, ``convert_qat``) is compared with it.

Run::

    python examples/08_prune_and_quantize.py                 # about a minute on 2 CPU cores
    python examples/08_prune_and_quantize.py --qat-epochs 2  # and QAT (about 50 s more: conv+BN folding)
    python examples/08_prune_and_quantize.py --dry-run       # a few steps on fake data, seconds
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch import nn

import warmstart as ws
from warmstart.compress import (convert_qat, count_parameters, load_compressed, measure_latency, prepare_qat, prune,
                                quantize, recover, save_compressed)
from warmstart.data import InMemoryLoader, fake_splits, split_loader


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=20, help="training epochs of the CNN, and of each recovery")
    parser.add_argument("--ratio", type=float, default=0.5, help="share of the parameters pruning removes")
    parser.add_argument("--qat-epochs", type=int, default=0, help="quantization-aware training epochs (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="where to save the pruned model (default: runs/08_prune_and_quantize; a dry run: a "
                             "temporary folder)")
    parser.add_argument("--dry-run", action="store_true", help="a few steps on fake data, to check the script runs")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dry_run and args.out_dir is None:  # a dry run leaves nothing behind
        with tempfile.TemporaryDirectory() as folder:
            args.out_dir = Path(folder)
            return run(args)
    return run(args)


def accuracy(model: nn.Module, test: InMemoryLoader) -> float:
    """Test accuracy in eval mode (also of an int8 graph, which a Trainer cannot hold)."""
    model.eval()
    with torch.no_grad():
        return sum(int((model(x).argmax(1) == y).sum()) for x, y in test) / test.dataset_size


def run(args: argparse.Namespace) -> int:
    out_dir = args.out_dir or Path("runs/08_prune_and_quantize")
    candidates = None  # quantize("auto") tries every int8 mode this device has
    if args.dry_run:
        data, args.epochs = fake_splits(96, 64), 1
        candidates = ["int8-weight", "int8-dynamic-eager"]  # no int8-static: its compilation takes seconds
    else:
        data = ws.data.digits(size=28)
    augment = ws.data.build_augmentation("digits", fill=data.background, batched=True)
    train_all = InMemoryLoader(data.train, batch_size=64, shuffle=True, seed=args.seed, transform=augment)
    test = InMemoryLoader(data.test, batch_size=500)
    example = data.train.tensors[0][:64]
    optimizer = {"name": "adamw", "lr": 3e-3, "weight_decay": 0.01}

    ws.seed_everything(args.seed)
    model = ws.models.small_cnn(num_classes=data.num_classes, width=16)
    ws.Trainer(model, optimizer, scheduler={"name": "cosine"}, max_epochs=args.epochs, seed=args.seed,
               progress=False).fit(train_all)
    rows = [("trained CNN", model, accuracy(model, test))]

    # 1. Structured pruning: a new, smaller model; `model` is left as it was.
    pruned, report = prune(model, example[:2], ratio=args.ratio)
    print(f"pruned {report.achieved_ratio:.1%} of the parameters ({report.params_before:,} -> "
          f"{report.params_after:,}); widths " + ", ".join(f"{c.name} {c.before[1]}->{c.after[1]}" for c in report.layers))
    rows.append(("pruned, before recovery", pruned, accuracy(pruned, test)))

    # 2. Recovery, chosen on held-out training labels.
    train, val = split_loader(train_all, 0.2, seed=args.seed)
    result = recover(pruned, train, val, teacher=model, method="auto", epochs=args.epochs, optimizer=optimizer,
                     seed=args.seed, progress=False)
    scored = ", ".join(f"{m} {a:.1%}" for m, a in result.scores.items()) or f"no trial ({result.selection.note})"
    print(f"recovery on 20% of the training labels: {scored} -> {result.method}")
    rows.append((f"pruned + {result.method}", pruned, accuracy(pruned, test)))

    # 3. Save and reload: the pruned shapes are rebuilt on the original architecture.
    path = save_compressed(pruned, out_dir / "pruned.safetensors")
    restored = load_compressed(path, ws.models.small_cnn(num_classes=data.num_classes, width=16))
    with torch.no_grad():
        same = torch.equal(restored.eval()(example), pruned.eval()(example))
    print(f"saved {path} ({path.stat().st_size / 1e3:.1f} kB); reloaded outputs identical: {same}")

    # 4. int8, by measurement on this CPU; quantization-aware training beside it.
    int8, q_report = quantize(pruned, "auto", example, calibration=[data.train.tensors[0][:512]],
                              candidates=candidates)
    print(q_report)
    rows.append((f"pruned + {result.method} + {q_report.mode}", int8, accuracy(int8, test)))
    if args.qat_epochs:
        qat = prepare_qat(pruned, example)
        # the teacher is the float model being quantized: int8 should learn to compute what it computes
        recover(qat, train_all, teacher=pruned, epochs=args.qat_epochs, seed=args.seed, progress=False,
                optimizer={**optimizer, "lr": 3e-4})
        qat_int8, _ = convert_qat(qat, example)
        rows.append((f"pruned + {result.method} + QAT ({args.qat_epochs} epochs), int8-static", qat_int8,
                     accuracy(qat_int8, test)))

    print(f"\n| model | test accuracy | parameters | ms per batch of {len(example)} |\n|---|---:|---:|---:|")
    for name, net, acc in rows:
        params = count_parameters(pruned if "int8" in name else net)  # int8 graphs hold their weights as constants
        print(f"| {name} | {acc:.1%} | {params:,} | {1e3 * measure_latency(net, example):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
