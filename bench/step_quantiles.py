"""Per-step times of warmstart against a plain loop in one process, interleaved run by run: quantiles, not means.

Three kinds of work, the same as three rows of ``bench/peers.py``:

- ``trainer``: MLP 784-256-10 on in-memory batches of 64, SGD with momentum: a plain loop and ``ws.Trainer``;
- ``online``: online distillation, teacher ``small_cnn(32)``, student ``small_cnn(8)``, 4,000 mnist5k images, Adam,
  KD with T=4 and 0.9 on the soft term: a plain loop, ``DistillTrainer`` and, when installed, torchdistill (the loop
  of ``bench/peers.py``'s torchdistill row);
- ``offline``: the same from teacher logits computed once: a plain loop that indexes them, ``DistillTrainer`` with its
  logit cache (and its per-batch fingerprint check).

Each round runs one epoch of each (the order turns by one each round), on the same tensors, in this one process, and the
iterable of batches notes the wall clock at every hand-out: the time between two is one step. Another process on the
machine only ever adds time to a step, so the low quantiles of the step times are the least disturbed measure of
what a loop costs; the table gives the 5th, 10th, 25th and 50th percentile of each and their difference.

    python bench/step_quantiles.py                  # all three, 12 rounds
    python bench/step_quantiles.py --work trainer --rounds 20
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from _timing import machine
from peers import KD_WEIGHT, TEMPERATURE, kd_loss
from torch import nn
from trainer_overhead import plain_loop

import warmstart as ws
from warmstart.data import InMemoryLoader


class Stamped:
    """Batches handed out from a list, the wall clock noted at every hand-out."""

    def __init__(self, batches: list[Any]):
        self.batches, self.stamps = batches, []

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Any]:
        for batch in self.batches:
            self.stamps.append(time.perf_counter())
            yield batch


class StampedLoader(InMemoryLoader):
    """An in-memory loader that notes the wall clock at every hand-out, in a list its clones share
    (``DistillTrainer`` takes one ``with_index=True`` for its logit cache); ``limit`` stops an epoch after that many
    batches."""

    stamps: list[float]
    limit: int | None

    def clone(self, **changes: Any) -> StampedLoader:
        twin = super().clone(**changes)
        twin.__class__, twin.stamps, twin.limit = StampedLoader, self.stamps, self.limit
        return twin

    def __len__(self) -> int:
        return min(super().__len__(), self.limit or super().__len__())

    def __iter__(self) -> Iterator[Any]:
        stamps, count = self.stamps, len(self)
        for index, batch in enumerate(super().__iter__()):
            if index == count:
                return
            stamps.append(time.perf_counter())
            yield batch


def stamp(batches: list[Any] | InMemoryLoader, steps: int | None = None) -> Stamped | StampedLoader:
    """A fresh stamped iterable over ``batches`` (``steps`` of them, a list taken round again if it is shorter)."""
    if isinstance(batches, InMemoryLoader):
        loader = batches.clone()
        loader.__class__, loader.stamps, loader.limit = StampedLoader, [], steps
        return loader
    return Stamped(batches if steps is None else [batches[i % len(batches)] for i in range(steps)])


def plain_kd(base: nn.Module, batches: Iterable[Any], teacher_logits: Callable[[Any], torch.Tensor]) -> None:
    """The plain distillation loop of both distillation works: a copy of ``base`` trained with Adam on ``kd_loss``
    against ``teacher_logits(batch)`` (taken before the student's forward, as in ``bench/peers.py``)."""
    student = copy.deepcopy(base)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)
    student.train()
    for batch in batches:
        target = teacher_logits(batch)
        loss = kd_loss(student(batch[0]), target, batch[1])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def trainer_work() -> dict[str, Callable[[Stamped], None]]:
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))

    def plain(batches: Stamped) -> None:
        model = copy.deepcopy(base)
        plain_loop(model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9), batches)

    def warmstart(batches: Stamped) -> None:
        model = copy.deepcopy(base)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        ws.Trainer(model, optimizer, max_epochs=1, device="cpu", progress=False).fit(batches)
    return {"plain": plain, "warmstart": warmstart}


def trainer_batches() -> list[Any]:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(300, 64, 784, generator=g), torch.randint(0, 10, (300, 64), generator=g)
    return [(x[i], y[i]) for i in range(300)]


def online_work() -> dict[str, Callable[[Stamped], None]]:
    from warmstart.distill import DistillTrainer
    from warmstart.models import small_cnn

    torch.manual_seed(0)
    teacher, base = small_cnn(width=32).eval().requires_grad_(False), small_cnn(width=8)

    @torch.no_grad()
    def run_teacher(batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return teacher(batch[0])

    def plain(batches: Stamped) -> None:
        plain_kd(base, batches, run_teacher)

    def warmstart(batches: Stamped) -> None:
        student = copy.deepcopy(base)
        optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)
        DistillTrainer(student, teacher, optimizer, temperature=TEMPERATURE, alpha=KD_WEIGHT, max_epochs=1,
                       device="cpu", progress=False).fit(batches)

    def torchdistill(batches: Stamped) -> None:  # the loop of bench/peers.py's torchdistill row, one epoch
        from peers import torchdistill_config
        from torchdistill.core.distillation import get_distillation_box

        student = copy.deepcopy(base)
        config = {**torchdistill_config(), "num_epochs": 1}
        box = get_distillation_box(teacher, student, {}, config, torch.device("cpu"), None, False, 1)
        box.pre_epoch_process(epoch=0)
        for x, y in batches:
            box.post_forward_process(loss=box.forward_process(x, y))
        box.post_epoch_process()
    loops = {"plain": plain, "warmstart": warmstart}
    if importlib.util.find_spec("torchdistill") is not None:  # pip install -e '.[bench]'
        loops["torchdistill"] = torchdistill
    return loops


def offline_work() -> dict[str, Callable[[StampedLoader], None]]:
    """Offline distillation: a plain loop that indexes teacher logits computed once, ``DistillTrainer`` with its logit
    cache (built at the first fit, opened at every later one, in fit's set-up)."""
    import tempfile

    from warmstart.distill import DistillTrainer
    from warmstart.models import small_cnn

    torch.manual_seed(0)
    teacher, base = small_cnn(width=32).eval().requires_grad_(False), small_cnn(width=8)
    folder = tempfile.TemporaryDirectory(prefix="step-quantiles-")  # kept by the closures, removed with the process
    computed: list[torch.Tensor] = []

    def plain(loader: StampedLoader) -> None:
        if not computed:  # once per process, like the cache
            with torch.no_grad():
                computed.append(torch.cat([teacher(x) for x, _ in InMemoryLoader(loader.inputs, loader.targets)]))
        plain_kd(base, loader.clone(with_index=True), lambda batch: computed[0][batch[2]])

    def warmstart(loader: StampedLoader) -> None:
        student = copy.deepcopy(base)
        optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)
        DistillTrainer(student, teacher, optimizer, temperature=TEMPERATURE, alpha=KD_WEIGHT, cache_teacher=True,
                       cache_path=f"{folder.name}/logits.npy", max_epochs=1, device="cpu", progress=False).fit(loader)
    return {"plain": plain, "warmstart": warmstart}


def distill_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """The first 4,000 mnist5k training images and their labels (as in ``bench/peers.py``)."""
    from warmstart.data import mnist5k

    images, labels = mnist5k().train.tensors
    return images[:4000].float().contiguous(), labels[:4000]


def online_batches() -> list[Any]:
    images, labels = distill_tensors()
    return [(images[i:i + 64], labels[i:i + 64]) for i in range(0, 4000, 64)]


def offline_batches() -> InMemoryLoader:
    images, labels = distill_tensors()
    return InMemoryLoader(images, labels, batch_size=64, shuffle=False)


WORK = {"trainer": (trainer_work, trainer_batches, 20), "online": (online_work, online_batches, 1),
        "offline": (offline_work, offline_batches, 1)}


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", nargs="+", choices=list(WORK), default=list(WORK))
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"machine: {machine(torch.device('cpu'))}")
    for name in args.work:
        make_loops, make_batches, skip = WORK[name]
        loops, batches = make_loops(), make_batches()
        steps: dict[str, list[float]] = {loop: [] for loop in loops}
        for loop in loops.values():  # warm-up, dropped
            loop(stamp(batches))
        for index in range(args.rounds):
            order = list(loops)  # turns by one each round: no loop always runs first or after the same other loop
            for loop in order[index % len(order):] + order[:index % len(order)]:
                stamped = stamp(batches)
                loops[loop](stamped)
                steps[loop] += [b - a for a, b in zip(stamped.stamps[skip:], stamped.stamps[skip + 1:])]
        unit, scale = ("µs", 1e6) if name == "trainer" else ("ms", 1e3)
        print(f"\n{name}: {args.rounds} rounds, {len(steps['plain'])} steps of each, one torch thread\n")
        others = [loop for loop in loops if loop != "plain"]
        print("| percentile | plain loop | " + " | ".join(f"{loop} (difference, ratio)" for loop in others) + " |")
        print("|---|---:|" + "---:|" * len(others))
        for q in (0.05, 0.10, 0.25, 0.50):
            plain = quantile(steps["plain"], q) * scale
            cells = []
            for loop in others:
                own = quantile(steps[loop], q) * scale
                cells.append(f"{own:,.2f} {unit} ({own - plain:+,.2f}, {own / plain:.3f})")
            print(f"| {q * 100:.0f} | {plain:,.2f} {unit} | " + " | ".join(cells) + " |")

if __name__ == "__main__":
    main()
