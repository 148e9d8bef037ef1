"""Knowledge distillation on CIFAR-10: a ResNet-50 teacher into a ResNet-18 student.

:class:`warmstart.distill.DistillTrainer` trains the student on
``alpha * T^2 * KL(teacher || student) + (1 - alpha) * CE(student, y)`` with the teacher frozen,
in eval mode, run under ``no_grad``; validation scores the student alone. Both networks use the
CIFAR stem (3x3 first convolution, no max-pool), as :func:`warmstart.models.resnet18_small` does.

The teacher should be trained: pass its weights with ``--teacher-weights`` (a ``.safetensors``,
``.pt`` state dict or warmstart checkpoint, e.g. ``runs/teacher/last.safetensors`` from a
``warmstart.Trainer`` run on the same architecture). Without them the teacher is random and the
run only shows the mechanics.

Needs CIFAR-10 (downloaded once by torchvision into ``$WARMSTART_DATA``, so internet on the first
run) and, realistically, a GPU: ResNet-50 forward passes over 50,000 images per epoch are slow on a CPU.

Run::

    python examples/04_distill_resnet50_to_resnet18_cifar10.py --teacher-weights teacher.safetensors
    python examples/04_distill_resnet50_to_resnet18_cifar10.py --dry-run  # fake 32x32 images, 2 steps
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import FakeData
from torchvision.transforms import v2

import warmstart as ws


def resnet50_cifar(num_classes: int = 10) -> nn.Module:
    """torchvision's ResNet-50 with the 3x3 stem and no max-pool used for 32x32 images."""
    model = ws.models.torchvision_model("resnet50", num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def fake_cifar(size: int, offset: int) -> Dataset:
    """Random 3x32x32 images with 10 classes, in place of CIFAR-10 (for ``--dry-run``)."""
    to_tensor = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    return FakeData(size=size, image_size=(3, 32, 32), num_classes=10, transform=to_tensor, random_offset=offset)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher-weights", type=Path, default=None, help="trained ResNet-50 weights (CIFAR stem)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1, help="SGD learning rate (cosine schedule)")
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--alpha", type=float, default=0.9, help="weight of the distillation term")
    parser.add_argument("--precision", default="32", help='"32", "bf16" or "16" (GPU)')
    parser.add_argument("--workers", type=int, default=4, help="DataLoader worker processes")
    parser.add_argument("--out-dir", type=Path, default=None, help="checkpoints and logs (default: runs/04_distill; a dry run: a temporary folder)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier run in the output folder (refused otherwise)")
    parser.add_argument("--dry-run", action="store_true", help="2 steps on fake 32x32 images, to check the script runs")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dry_run and args.out_dir is None:  # a dry run leaves nothing behind
        with tempfile.TemporaryDirectory() as folder:
            args.out_dir = Path(folder)
            return run(args)
    return run(args)


def run(args: argparse.Namespace) -> int:
    out_dir = args.out_dir or Path("runs/04_distill")
    if args.dry_run:
        train_set, test_set = fake_cifar(4, 0), fake_cifar(4, 10**6)  # 2 steps of 2 images
        args.epochs, args.batch_size, args.workers = 1, 2, 0
    else:
        try:
            train_set, test_set = ws.data.torchvision_splits("cifar10", augment=ws.data.build_augmentation("cifar", size=32))
        except ws.DataError as err:
            print(f"error: {err}\nTo check the script offline, run it with --dry-run.", file=sys.stderr)
            return 1
    train = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, num_workers=args.workers, drop_last=True)
    test = DataLoader(test_set, batch_size=2 * args.batch_size, num_workers=args.workers)

    teacher = resnet50_cifar()
    if args.teacher_weights is not None:
        print(ws.finetune.load_pretrained(teacher, args.teacher_weights))
    elif not args.dry_run:
        print("warning: no --teacher-weights, so the teacher is untrained and its soft labels are noise")
    student = ws.models.resnet18_small(num_classes=10)

    optimizer = torch.optim.SGD(student.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    trainer = ws.distill.DistillTrainer(student, teacher, optimizer, temperature=args.temperature, alpha=args.alpha,
                                        scheduler={"name": "cosine"}, max_epochs=args.epochs, precision=args.precision,
                                        out_dir=str(out_dir), overwrite=args.overwrite)
    trainer.fit(train, test)
    metrics = trainer.evaluate(test)
    print(f"student (ResNet-18, {sum(p.numel() for p in student.parameters()) / 1e6:.1f}M parameters): "
          f"test accuracy {metrics['accuracy']:.1%}; weights in {out_dir / 'last.safetensors'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
