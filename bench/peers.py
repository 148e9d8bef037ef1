"""Side by side with the peers: a plain loop, warmstart, Lightning, the HF Trainer (+ peft) and torchdistill.

Four kinds of work, each trained by every peer that does it:

- Trainer step: MLP 784-256-10, batch 64, SGD (momentum 0.9): plain loop, ``ws.Trainer``, Lightning (the flags
  below, and ``barebones=True``, Lightning's own mode for measuring its overhead), HF ``Trainer``;
- LoRA step: all-MiniLM-L6-v2 from its installed package, r=8 adapters (``warmstart.finetune.add_lora``: peft's
  ``inject_adapter_in_model``) and the new head, AdamW, batches of random token ids: plain loop + peft,
  ``FinetuneTrainer(method="lora")``, HF ``Trainer`` + peft;
- online distillation epoch: teacher ``small_cnn(32)``, student ``small_cnn(8)``, the 4,000 training images of
  mnist5k, batch 64, Adam, KD with T=4 and 0.9 on the soft term: plain loop, ``DistillTrainer``, torchdistill
  (``DistillationBox`` with ``WeightedSumLoss`` over ``KDLoss``, driven by the loop of its own examples);
- offline distillation epoch (teacher logits computed once): plain loop over an in-memory logits tensor,
  ``DistillTrainer(cache_teacher=True)`` (its cache built in the dropped warm-up round).

Fair settings: each peer runs in its own process with one torch thread, from the same model initialisation, on the
same batches (tensors prepared in memory; the HF Trainer gets them through ``get_train_dataloader``, Lightning as an
iterable, torchdistill from the loop), with an optimizer of the same type and settings built outside the trainer and
handed to it (torchdistill builds it from its config, the documented way). Nobody logs, checkpoints, shows a
progress bar or a model summary, clips gradients or schedules the learning rate (the HF Trainer always steps a
scheduler: ``constant``). Every process also runs the plain loop beside its peer, on the same tensors: each round is
one run of each (which goes first alternates), and the peer's ratio is to the plain run of the same process and
round. A process's own speed (where its memory landed) moves a step by a percent or two from process to process,
more than the differences measured here; beside each other in one process, the two runs share it. The processes take
turns: one warm-up round each (dropped), then rounds whose order of peers turns by one each time (A B C, B C A, C A
B, ...), one process at a time. Each round measures wall time and the process's CPU time:

- step rows: the steady state of one ``fit``: from handing out batch ``warmup`` (100; 2 for LoRA) to handing out the
  last one, noted by the iterable of batches itself, so every peer is timed at the same points of its own loop and
  fit's set-up and tear-down are outside (Lightning fetches a batch ahead: its span is one step earlier, as long);
  the hand-outs also time every step, and the median step (which leaves out what a loop does every n steps, and the
  steps another process on the machine slowed) is compared with the plain loop's median step beside it;
- epoch rows: the second epoch of a two-epoch run, from its first batch until the run returns (its end-of-epoch
  work included; the first epoch warms up what a run builds lazily, such as the optimizer's state); the loader
  times that epoch's steps too, and their median is compared as on the step rows.

Ratios are medians over rounds; the spread is their min-max. Every process is pinned to the same core, and each peer
has 3 processes that take its rounds in turn. The plain loop's own processes run it beside itself: how far that
ratio is from 1 is the bench's floor, the smallest difference it can tell apart.

    pip install -e '.[bench]'
    python bench/peers.py           # the figures in bench/RESULTS.md (about 25 minutes on 2 cores)
    python bench/peers.py --quick   # seconds of work per peer: checks that the script runs end to end
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import importlib.util
import logging
import multiprocessing
import os
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Sequence
from functools import cache, partial
from typing import Any

import torch
import torch.nn.functional as F
from _timing import machine, median
from torch import nn

import warmstart as ws
from warmstart.data import InMemoryLoader

# (wall seconds, CPU seconds, steps or epochs, the median step's wall seconds or None) of one round
Span = tuple[float, float, int, float | None]
LORA = {"r": 8, "alpha": 16.0, "dropout": 0.05, "targets": "auto"}
TEMPERATURE, KD_WEIGHT = 4.0, 0.9  # warmstart's alpha weighs the soft term; torchdistill's alpha the hard one
PEER_PACKAGES = {"lightning": "lightning", "lightning-barebones": "lightning", "hf": "transformers",
                 "hf+peft": "transformers", "torchdistill": "torchdistill"}


# ---------------------------------------------------------------------- timing


def clocks() -> tuple[float, float]:
    """Wall clock and this process's CPU time, in seconds."""
    return time.perf_counter(), time.process_time()


class TimedBatches:
    """Prepared batches that note the clocks when batch ``skip`` and when the last batch are handed out.

    Between the two, ``len - 1 - skip`` steps run, in any loop: one that fetches a batch ahead (Lightning) takes both
    one step earlier. Loops that know the length (Lightning, HF) never ask past the last batch, so that is the end.
    The wall clock at every hand-out in between gives each step's time, and their median the typical step.
    """

    def __init__(self, batches: Sequence[Any], skip: int):
        self.batches, self.skip = batches, skip
        self.start = self.end = (0.0, 0.0)
        self.stamps: list[float] = []

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        last = len(self.batches) - 1
        stamps = self.stamps = []
        for index, batch in enumerate(self.batches):
            if index == self.skip:
                self.start = clocks()
            if index == last:
                self.end = clocks()
            if index >= self.skip:
                stamps.append(time.perf_counter())
            yield batch

    def span(self) -> Span:
        steps = [b - a for a, b in zip(self.stamps, self.stamps[1:])]
        return (self.end[0] - self.start[0], self.end[1] - self.start[1], len(self.batches) - 1 - self.skip,
                median(steps))


class EpochClock:
    """Where the second epoch of a run started, and the wall clock at each of its hand-outs: noted by
    :class:`ClockedLoader`."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.epochs, self.start, self.stamps = 0, (0.0, 0.0), []


class ClockedLoader(InMemoryLoader):
    """An in-memory loader that notes the clocks on its :class:`EpochClock` when its second epoch starts, and the wall
    clock at every hand-out of that epoch.

    Its clones (``DistillTrainer`` takes one ``with_index=True`` for the logit cache) share the clock.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.clock = EpochClock()

    def clone(self, **changes: Any) -> InMemoryLoader:
        twin = super().clone(**changes)  # an InMemoryLoader over the same tensors
        twin.__class__, twin.clock = ClockedLoader, self.clock
        return twin

    def __iter__(self):
        clock = self.clock
        clock.epochs += 1
        for index, batch in enumerate(super().__iter__()):
            if clock.epochs == 2:
                if index == 0:
                    clock.start = clocks()
                clock.stamps.append(time.perf_counter())
            yield batch


def timed_second_epoch(loader: Any, run: Callable[[], object]) -> Span:
    """The clocks from the start of the second epoch of ``run()`` (two epochs over ``loader``) until it returns.

    The first epoch warms up what a run builds lazily (the optimizer's state; warmstart's check of its logit cache is
    in fit's set-up); the second is one epoch as every further one runs, its end-of-epoch work included. The median
    step is that of the second epoch's steps between two hand-outs (the last step, with the end of the epoch, is not
    one of them).
    """
    clock = loader.clock
    clock.reset()
    run()
    end = clocks()
    steps = [b - a for a, b in zip(clock.stamps, clock.stamps[1:])]
    return end[0] - clock.start[0], end[1] - clock.start[1], 1, median(steps)


# ---------------------------------------------------------------------- the loops, one per peer


def classify(model: nn.Module, batch: Any) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


def classify_text(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, 2)
    return F.cross_entropy(logits, batch["labels"])


def plain_fit(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterable[Any], loss_of: Callable) -> None:
    model.train()
    for batch in batches:
        loss = loss_of(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def warmstart_fit(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterable[Any], loss_of: Callable) -> None:
    ws.Trainer(model, optimizer, max_epochs=1, device="cpu", progress=False).fit(batches)


def warmstart_lora_fit(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterable[Any], loss_of: Callable) -> None:
    from warmstart.finetune import FinetuneTrainer

    trainer = FinetuneTrainer(model, optimizer, method="lora", lora=LORA, max_epochs=1, device="cpu", progress=False)
    trainer.fit(batches)


def lightning_fit(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterable[Any], loss_of: Callable,
                  barebones: bool = False) -> None:
    import lightning as L

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)  # its start-up lines (set INFO on import)

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = model

        def training_step(self, batch, batch_idx):
            return loss_of(self.net, batch)

        def configure_optimizers(self):
            return optimizer

    flags = {"barebones": True} if barebones else {
        "logger": False, "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False}
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=1, num_sanity_val_steps=0, **flags)
    trainer.fit(Module(), train_dataloaders=batches)


def hf_fit(model: nn.Module, optimizer: torch.optim.Optimizer, batches: TimedBatches, loss_of: Callable) -> None:
    """The HF Trainer on ``batches`` (dicts); a Hugging Face model computes its own loss from ``labels``."""
    import transformers

    own_loss = "input_ids" in batches.batches[0]

    class Trainer(transformers.Trainer):
        def get_train_dataloader(self):
            return batches  # the prepared batches, as every other peer gets them

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if own_loss:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            return loss_of(model, (inputs["x"], inputs["labels"]))

    with tempfile.TemporaryDirectory() as out:
        args = transformers.TrainingArguments(
            output_dir=out, num_train_epochs=1, per_device_train_batch_size=len(batches.batches[0]["labels"]),
            use_cpu=True, report_to="none", save_strategy="no", logging_strategy="no", eval_strategy="no",
            disable_tqdm=True, max_grad_norm=0.0, lr_scheduler_type="constant", logging_nan_inf_filter=False,
            dataloader_num_workers=0, label_names=["labels"], seed=0)
        trainer = Trainer(model=model, args=args, optimizers=(optimizer, None))
        trainer.remove_callback(transformers.PrinterCallback)  # it prints the final metrics (disable_tqdm adds it)
        trainer.train()


# ---------------------------------------------------------------------- the work: one round function per peer


@cache
def mlp_setup(count: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The MLP's initialisation and ``count`` batches of 64 (one copy per process: a peer and the plain loop beside
    it train from the same tensors)."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    g = torch.Generator().manual_seed(1)
    return base, torch.randn(count, 64, 784, generator=g), torch.randint(0, 10, (count, 64), generator=g)


def trainer_step_work(peer: str, args: argparse.Namespace) -> Callable[[], Span]:
    """Trainer step: MLP 784-256-10 on in-memory batches of 64, SGD with momentum."""
    count = args.warmup + args.steps
    base, x, y = mlp_setup(count)
    batches = [{"x": x[i], "labels": y[i]} if peer == "hf" else (x[i], y[i]) for i in range(count)]
    fit = {"plain": plain_fit, "warmstart": warmstart_fit, "lightning": lightning_fit,
           "lightning-barebones": partial(lightning_fit, barebones=True), "hf": hf_fit}[peer]

    def one_round() -> Span:
        model = copy.deepcopy(base)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        timer = TimedBatches(batches, args.warmup)
        fit(model, optimizer, timer, classify)
        return timer.span()
    return one_round


@cache
def lora_setup(count: int, size: int, length: int) -> tuple[nn.Module, list[dict[str, torch.Tensor]]]:
    """MiniLM with its adapters and head, and ``count`` batches of random token ids (one copy per process)."""
    from warmstart.finetune import add_lora, load_text_classifier

    torch.manual_seed(0)
    base, _ = load_text_classifier("all-MiniLM-L6-v2", num_labels=2)
    add_lora(base, **LORA)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, base.config.vocab_size, (count, size, length), generator=g)
    ids[..., 0], ids[..., -1] = 101, 102  # [CLS] ... [SEP]
    labels = torch.randint(0, 2, (count, size), generator=g)
    return base, [{"input_ids": ids[i], "attention_mask": torch.ones_like(ids[i]), "labels": labels[i]}
                  for i in range(count)]


def lora_step_work(peer: str, args: argparse.Namespace) -> Callable[[], Span]:
    """LoRA step: all-MiniLM-L6-v2 with r=8 adapters and a 2-class head, AdamW, random token ids."""
    base, batches = lora_setup(args.lora_warmup + args.lora_steps, *args.lora_batch)
    fit = {"plain+peft": plain_fit, "warmstart": warmstart_lora_fit, "hf+peft": hf_fit}[peer]

    def one_round() -> Span:
        model = copy.deepcopy(base)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        timer = TimedBatches(batches, args.lora_warmup)
        fit(model, optimizer, timer, classify_text)
        return timer.span()
    return one_round


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``0.9 * T^2 * KL(softmax(t / T) || softmax(s / T)) + 0.1 * CE(s, y)``, batch means."""
    soft = F.kl_div(F.log_softmax(student_logits / TEMPERATURE, dim=-1), F.log_softmax(teacher_logits / TEMPERATURE, dim=-1),
                    reduction="batchmean", log_target=True)
    return KD_WEIGHT * TEMPERATURE ** 2 * soft + (1 - KD_WEIGHT) * F.cross_entropy(student_logits, target)


@cache
def distill_setup(count: int) -> tuple[Any, nn.Module, nn.Module]:
    """The first ``count`` mnist5k training images (4,000; fewer with ``--quick``) in an in-memory loader, the teacher
    and the student (one copy per process)."""
    from warmstart.data import mnist5k
    from warmstart.models import small_cnn

    images, labels = mnist5k().train.tensors
    images, labels = images[:count].float().contiguous(), labels[:count]
    loader = ClockedLoader(images, labels, batch_size=64, shuffle=False)
    torch.manual_seed(0)
    teacher, student = small_cnn(width=32).eval().requires_grad_(False), small_cnn(width=8)
    return loader, teacher, student


def online_work(peer: str, args: argparse.Namespace) -> Callable[[], Span]:
    """Online distillation: the teacher runs on every batch."""
    loader, teacher, base = distill_setup(args.images)

    def plain(student: nn.Module, optimizer: torch.optim.Optimizer) -> Span:
        def epochs() -> None:
            student.train()
            for _ in range(2):
                for x, y in loader:
                    with torch.no_grad():
                        teacher_logits = teacher(x)  # (B, 10)
                    loss = kd_loss(student(x), teacher_logits, y)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
        return timed_second_epoch(loader, epochs)

    def warmstart(student: nn.Module, optimizer: torch.optim.Optimizer) -> Span:
        from warmstart.distill import DistillTrainer

        trainer = DistillTrainer(student, teacher, optimizer, temperature=TEMPERATURE, alpha=KD_WEIGHT, max_epochs=2,
                                 device="cpu", progress=False)
        return timed_second_epoch(loader, lambda: trainer.fit(loader))

    def torchdistill(student: nn.Module, optimizer: torch.optim.Optimizer) -> Span:
        from torchdistill.core.distillation import get_distillation_box

        # its own Adam, built from the config as its YAML would give it (same settings as ``optimizer``)
        box = get_distillation_box(teacher, student, {}, torchdistill_config(), torch.device("cpu"), None, False, 1)

        def epochs() -> None:  # the epochs of torchdistill's examples (train_one_epoch), without their metric logger
            for epoch in range(2):
                box.pre_epoch_process(epoch=epoch)
                for x, y in loader:
                    loss = box.forward_process(x, y)
                    box.post_forward_process(loss=loss)
                box.post_epoch_process()
        return timed_second_epoch(loader, epochs)

    run = {"plain": plain, "warmstart": warmstart, "torchdistill": torchdistill}[peer]

    def one_round() -> Span:
        student = copy.deepcopy(base)
        return run(student, torch.optim.Adam(student.parameters(), lr=1e-3))
    return one_round


def torchdistill_config() -> dict[str, Any]:
    """The ``train`` section of a torchdistill KD config (its sample configs' keys), as the dict its YAML gives."""
    kd = {"student_module_path": ".", "student_module_io": "output", "teacher_module_path": ".",
          "teacher_module_io": "output", "temperature": TEMPERATURE, "alpha": 1 - KD_WEIGHT, "reduction": "batchmean"}
    return {"num_epochs": 2,
            "teacher": {"forward_proc": "forward_batch_only", "sequential": [], "requires_grad": False,
                        "frozen_modules": []},
            "student": {"forward_proc": "forward_batch_only", "sequential": [], "requires_grad": True,
                        "frozen_modules": []},
            "optimizer": {"key": "Adam", "kwargs": {"lr": 1e-3}},
            "criterion": {"key": "WeightedSumLoss",
                          "kwargs": {"sub_terms": {"kd": {"criterion": {"key": "KDLoss", "kwargs": kd}, "weight": 1.0}}}}}


def offline_work(peer: str, args: argparse.Namespace) -> Callable[[], Span]:
    """Offline distillation: the teacher's logits computed once, read per batch."""
    loader, teacher, base = distill_setup(args.images)
    cache = tempfile.TemporaryDirectory(prefix="peers-")  # kept open by the closure below, removed with the process
    if peer == "plain":
        with torch.no_grad():
            logits = torch.cat([teacher(x) for x, _ in loader])  # (N, 10), in memory
        indexed = loader.clone(with_index=True)

    def one_round() -> Span:
        student = copy.deepcopy(base)
        optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)
        if peer == "warmstart":
            from warmstart.distill import DistillTrainer

            trainer = DistillTrainer(student, teacher, optimizer, temperature=TEMPERATURE, alpha=KD_WEIGHT,
                                     cache_teacher=True, cache_path=f"{cache.name}/logits.npy", max_epochs=2,
                                     device="cpu", progress=False)
            return timed_second_epoch(loader, lambda: trainer.fit(loader))

        def epochs() -> None:
            student.train()
            for _ in range(2):
                for x, y, rows in indexed:
                    loss = kd_loss(student(x), logits[rows], y)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
        return timed_second_epoch(loader, epochs)
    return one_round


# name: (title, unit, the work, its peers with the plain loop first, rounds)
ROWS: dict[str, tuple[str, str, Callable, list[str], int]] = {
    "trainer": ("Trainer step, MLP 784-256-10, batch 64", "step", trainer_step_work,
                ["plain", "warmstart", "lightning", "lightning-barebones", "hf"], 15),
    "lora": ("LoRA step, all-MiniLM-L6-v2, r=8, batch 8x32 tokens", "step", lora_step_work,
             ["plain+peft", "warmstart", "hf+peft"], 12),
    "online": ("online distillation epoch, small CNNs, mnist5k", "epoch", online_work,
               ["plain", "warmstart", "torchdistill"], 12),
    "offline": ("offline distillation epoch, cached logits", "epoch", offline_work, ["plain", "warmstart"], 15),
}


# ---------------------------------------------------------------------- processes taking turns


def serve(row: str, peer: str, options: dict[str, Any], conn: Any) -> None:
    """A peer's process: build the work and the plain loop's beside it, run a warm-up round of each, then per
    ``"run"`` message a round of each (which goes first alternates) and send both spans: ``(peer, plain)``.

    The plain loop's round in the same process is the peer's reference: both use the same tensors and the same
    process (where its memory landed, which libraries it loaded), so what differs between the two is the loop.
    """
    if options.get("cpu") is not None:  # every peer on the same core: no peer gains from a quieter one
        os.sched_setaffinity(0, {options["cpu"]})
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    for name in ("torch", "lightning", "lightning.pytorch", "lightning.fabric", "torchdistill", "transformers",
                 "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        work, peers = ROWS[row][2], ROWS[row][3]
        one_round = work(peer, argparse.Namespace(**options))
        plain_round = work(peers[0], argparse.Namespace(**options))  # the plain loop beside itself: the floor
        one_round(), plain_round()  # warm-up: lazy imports, allocator, caches (warmstart's offline logit cache); dropped
        conn.send(("ready", None))
        turn = 0
        while conn.recv() == "run":
            if turn % 2 == 0:
                plain, own = plain_round(), one_round()
            else:
                own, plain = one_round(), plain_round()
            turn += 1
            conn.send(("ok", (own, plain)))
    except Exception:  # noqa: BLE001  (sent to the parent, which stops with it)
        conn.send(("error", traceback.format_exc()))


def run_row(row: str, peers: list[str], rounds: int,
            args: argparse.Namespace) -> dict[str, list[tuple[Span, Span]]]:
    """Every peer's spans and those of the plain loop beside it, the peers taking turns round by round (one process
    running at a time).

    Each peer has ``args.processes`` processes, used in turn round by round: a process's own speed (where its memory
    landed) moves a step by a percent or two, and it is then averaged over several, as it is for the plain loop.
    """
    context = multiprocessing.get_context("spawn")
    workers: dict[str, list[tuple[Any, Any]]] = {}
    for peer in peers:
        for _ in range(args.processes):
            parent, child = context.Pipe()
            process = context.Process(target=serve, args=(row, peer, vars(args), child), daemon=True)
            process.start()
            workers.setdefault(peer, []).append((process, parent))
    try:
        for peer, replicas in workers.items():
            for _, conn in replicas:
                _answer(conn, row, peer)
        spans: dict[str, list[tuple[Span, Span]]] = {peer: [] for peer in peers}
        order = list(workers)
        for index in range(rounds):
            # the order turns by one each round (A B C, B C A, C A B, ...): no peer always runs first, or always
            # right after the same other peer
            for peer in order[index % len(order):] + order[:index % len(order)]:
                conn = workers[peer][index % args.processes][1]
                conn.send("run")
                spans[peer].append(_answer(conn, row, peer))
        return spans
    finally:
        for replicas in workers.values():
            for process, conn in replicas:
                if process.is_alive():
                    conn.send("stop")
                process.join(timeout=30)


def _answer(conn: Any, row: str, peer: str) -> Any:
    status, value = conn.recv()
    if status == "error":
        raise RuntimeError(f"{row} / {peer} failed:\n{value}")
    return value


# ---------------------------------------------------------------------- report


def summarize(spans: dict[str, list[tuple[Span, Span]]]) -> dict[str, dict[str, float]]:
    """Per peer: median wall and CPU seconds per unit, their min-max, and the ratios to the plain loop's round beside
    it (same process, same round)."""
    table = {}
    for peer, pairs in spans.items():
        walls = [own[0] / own[2] for own, _ in pairs]
        plain_walls = [plain[0] / plain[2] for _, plain in pairs]
        ratios = [a / b for a, b in zip(walls, plain_walls)]
        cpu_ratios = [(own[1] / own[2]) / (plain[1] / plain[2]) for own, plain in pairs]
        table[peer] = {"wall": median(walls), "wall_min": min(walls), "wall_max": max(walls),
                       "cpu": median([own[1] / own[2] for own, _ in pairs]), "ratio": median(ratios),
                       "ratio_min": min(ratios), "ratio_max": max(ratios), "cpu_ratio": median(cpu_ratios),
                       "overhead": median([a - b for a, b in zip(walls, plain_walls)])}
        if pairs[0][0][3] is not None:  # step rows: the median step, against the plain loop's beside it
            steps = [own[3] / plain[3] for own, plain in pairs]
            table[peer] |= {"step": median([own[3] for own, _ in pairs]), "step_ratio": median(steps),
                            "step_min": min(steps), "step_max": max(steps)}
    return table


def format_time(seconds: float, unit: str) -> str:
    return f"{seconds * 1e6:,.0f} µs" if unit == "step" and seconds < 0.01 else f"{seconds * 1e3:,.1f} ms"


def versions() -> str:
    names = ["torch", "lightning", "transformers", "peft", "accelerate", "torchdistill"]
    found = []
    for name in names:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return ", ".join(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds per peer: checks the script runs")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--rounds", type=int, help="timed rounds per peer (default 15 or 21 by row; 2 with --quick)")
    parser.add_argument("--processes", type=int, help="processes per peer, taking the rounds in turn (default 3; 1 with "
                        "--quick)")
    parser.add_argument("--cpu", type=int, default=max(os.sched_getaffinity(0)),
                        help="the core every peer's process is pinned to (default: the highest; -1: not pinned)")
    args = parser.parse_args()
    args.cpu = None if args.cpu < 0 else args.cpu
    quick = args.quick
    args.processes = args.processes or (1 if quick else 3)
    args.warmup, args.steps = (5, 20) if quick else (100, 1000)
    args.lora_warmup, args.lora_steps, args.lora_batch = (1, 2, (2, 8)) if quick else (2, 8, (8, 32))
    args.images = 256 if quick else 4000
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")  # the peers' processes
    torch.set_num_threads(1)

    started, load_before = time.perf_counter(), os.getloadavg()
    print(f"machine: {machine(torch.device('cpu'))}; load average {load_before[0]:.2f} (1 min) at the start")
    print(f"peers: {versions()}")
    summary = []
    for row in args.rows:
        title, unit, _, peers, rounds = ROWS[row]
        rounds = args.rounds or (2 if quick else rounds)
        missing = [p for p in peers if p in PEER_PACKAGES and importlib.util.find_spec(PEER_PACKAGES[p]) is None]
        if missing:
            print(f"({row}: {', '.join(missing)} left out, not installed: pip install -e '.[bench]')")
        peers = [p for p in peers if p not in missing]
        table = summarize(run_row(row, peers, rounds, args))
        print(f"\n{title}: {rounds} rounds, {args.processes} processes per peer taking them in turn, one torch thread, "
              f"core {args.cpu}\n")
        steps = "step" in table[peers[0]]
        print(f"| peer | wall / {unit}, median (min-max) | CPU / {unit} | wall / plain beside it (min-max) | "
              "CPU / plain |" + (" median step | median step / plain beside it (min-max) |" if steps else ""))
        print("|---|---:|---:|---:|---:|" + ("---:|---:|" if steps else ""))
        for peer, t in table.items():
            name = f"{peer} (beside itself: the floor)" if peer == peers[0] else peer
            typical = (f" {format_time(t['step'], unit)} | {t['step_ratio']:.3f} ({t['step_min']:.3f}-"
                       f"{t['step_max']:.3f}) |") if steps else ""
            print(f"| {name} | {format_time(t['wall'], unit)} ({format_time(t['wall_min'], unit)}-"
                  f"{format_time(t['wall_max'], unit)}) | {format_time(t['cpu'], unit)} | "
                  f"{t['ratio']:.3f} ({t['ratio_min']:.3f}-{t['ratio_max']:.3f}) | {t['cpu_ratio']:.3f} |{typical}")
        summary.append((title, table))

    print("\n| work | warmstart / plain loop | peers / plain loop |\n|---|---:|---|")
    for title, table in summary:
        ws_figures = table["warmstart"]
        added = f" ({ws_figures['overhead'] * 1e6:+,.0f} µs/step)" if "step" in title else ""
        if "step_ratio" in ws_figures:
            added += f"; median step {ws_figures['step_ratio']:.3f}"
        def figures(t: dict[str, float]) -> str:
            return f"{t['ratio']:.3f}" + (f" (median step {t['step_ratio']:.3f})" if "step_ratio" in t else "")
        peers = ", ".join(f"{p} {figures(t)}" for p, t in list(table.items())[1:] if p != "warmstart")
        floor = figures(next(iter(table.values())))
        print(f"| {title} | {ws_figures['ratio']:.3f}{added} | {peers or '-'}; floor {floor} |")
    load_after = os.getloadavg()
    print(f"\nwall time {time.perf_counter() - started:.0f} s; load average {load_after[0]:.2f} (1 min), "
          f"{load_after[1]:.2f} (5 min) at the end")


if __name__ == "__main__":
    main()
