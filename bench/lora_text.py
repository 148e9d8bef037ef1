"""Does LoRA match full fine-tuning of all-MiniLM-L6-v2? Two VADER tasks, the same epochs, optimizer and seeds.

The text job (``configs/text_sentiment.yaml``) compares LoRA (r=8, alpha=16, 5 epochs at lr 1e-3) with a full
fine-tune trained for 3 epochs at lr 1e-4, on one task. Here both methods train for the same number of epochs
(``--epochs``, default the job's LoRA epochs) with the job's AdamW, weight decay, schedule, batch size, head
initialisation and batch order, each at the job's learning rate for that method (full 1e-4, LoRA 1e-3);
``--job-epochs-reference`` adds the full fine-tune at the job's 3 epochs. Two tasks of
the VADER lexicon (``warmstart.data.vader_lexicon``, split seed 0):

- ``polarity``: positive or negative, the labels of a quarter of the training words (the job's budget);
  test accuracy on the 1,162 test words.
- ``valence``: the mean rating in [-4, 4] of every entry (regression), the labels of a quarter of the training
  words (``labelled_split``, stratified by each distinct mean rating); a 1-output head
  (``load_text_classifier(num_labels=1)``) trained on the mean squared error; test RMSE and Pearson r on the
  1,498 test words.

Beside them: the linear probe (the head alone on frozen mean-pooled embeddings, the job's probe settings) and a
constant baseline. Mean ± std over the seeds, each seed, and the seeds on which LoRA beats the full fine-tune.

    python bench/lora_text.py              # about 15-20 minutes on 2 idle cores (from the text job's s / epoch)
    python bench/lora_text.py --workers 3 --threads 1   # 36 minutes on a shared 2-core machine (load 12-15)
    python bench/lora_text.py --dry-run    # a few words and one epoch: checks the script runs
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import multiprocessing
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from _timing import machine

from warmstart.data import labelled_split, text_loader, vader_lexicon
from warmstart.finetune import FinetuneTrainer, load_text_classifier, load_tokenizer
from warmstart.jobs import load_job

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "text_sentiment.yaml"
TASKS = ("polarity", "valence")
FULL_AT_JOB_EPOCHS = "full fine-tune, the job's epochs"


def squared_error(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of a 1-output head: ``mean((output[:, 0] - target) ** 2)`` over the batch.

    ``output`` is ``(B, 1)`` and ``target`` ``(B,)``: ``F.mse_loss(output, target)`` would broadcast them to
    ``(B, B)`` and average every pair, so the column is taken first.
    """
    return F.mse_loss(output.squeeze(-1), target)


def load_settings(overrides: list[str]) -> Any:
    """The text job's settings: data budget, batch sizes, optimizers, schedules and LoRA options."""
    return load_job("run", CONFIG, overrides)


def build_data(job: Any, task: str, limit: int | None) -> dict[str, Any]:
    """The task's splits, the labelled quarter of the training words, the test words and the model's tokenizer."""
    splits = vader_lexicon(task, seed=job.data.split_seed, val_fraction=job.data.val_fraction,
                           test_fraction=job.data.test_fraction)
    labelled, _ = labelled_split(splits.train, job.data.labelled, seed=job.data.split_seed)
    test = splits.test
    if limit is not None:  # --dry-run
        labelled, test = labelled.subset(range(0, len(labelled), len(labelled) // limit)), test.subset(range(limit))
    return {"task": task, "splits": splits, "labelled": labelled, "test_set": test, "outputs": splits.num_classes,
            "tokenizer": load_tokenizer(job.model)}


def loader(data: dict[str, Any], job: Any, part: str, seed: int = 0) -> Any:
    """Shuffled training batches (ordered by ``seed``) of the labelled words, or the test words in length order."""
    if part == "train":
        return text_loader(data["labelled"], data["tokenizer"], job.data.batch_size, shuffle=True, seed=seed,
                           max_length=job.data.max_length)
    return text_loader(data["test_set"], data["tokenizer"], job.data.eval_batch_size, max_length=job.data.max_length)


@torch.no_grad()
def predictions(model: torch.nn.Module, batches: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, C)`` outputs and ``(N,)`` labels of every batch (the model in eval mode)."""
    model.eval()
    outputs, labels = [], []
    for batch in batches:
        outputs.append(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float())
        labels.append(batch["labels"])
    return torch.cat(outputs), torch.cat(labels)


def scores(model: torch.nn.Module, data: dict[str, Any], job: Any) -> dict[str, float]:
    """Test accuracy (%) for polarity; test RMSE and Pearson r for valence."""
    output, label = predictions(model, loader(data, job, "test"))
    if data["task"] == "polarity":
        return {"accuracy": 100 * float((output.argmax(-1) == label).float().mean())}
    predicted = output[:, 0]
    return {"rmse": math.sqrt(float(((predicted - label) ** 2).mean())),
            "pearson": float(torch.corrcoef(torch.stack([predicted, label]))[0, 1])}


def constant_baseline(data: dict[str, Any]) -> dict[str, float]:
    """The majority class of the labelled words (polarity), or their mean rating (valence), for every test word."""
    labels, test = data["labelled"].labels, data["test_set"].labels
    if data["task"] == "polarity":
        return {"accuracy": 100 * float((test == torch.bincount(labels).argmax()).float().mean())}
    return {"rmse": math.sqrt(float(((test - labels.mean()) ** 2).mean())), "pearson": float("nan")}


def train(method: str, data: dict[str, Any], job: Any, seed: int, epochs: int) -> dict[str, float]:
    """Fine-tune a fresh pretrained model one way (``probe``, ``full``, ``lora``) and score it on the test words.

    Every method starts from the same head (``torch.manual_seed(seed)`` before loading) and sees the
    labelled words in the same order; ``full`` and ``lora`` train for ``epochs`` with the job's
    optimizer and schedule of that method (``finetune`` and ``lora`` sections).
    """
    torch.manual_seed(seed)
    model, _ = load_text_classifier(job.model, num_labels=data["outputs"], pooling="mean" if method == "probe" else "cls")
    loss_fn = squared_error if data["task"] == "valence" else None
    if method == "probe":
        stage, options = job.probe, {"method": "linear_probe"}
        epochs = stage.trainer.max_epochs
    elif method == "full":
        stage, options = job.finetune, {"method": {"name": "full", "backbone_lr_mult": 1.0}}
    else:
        stage = job.lora
        options = {"method": "lora", "lora": {"r": stage.r, "alpha": stage.alpha, "targets": stage.targets,
                                               "dropout": stage.dropout}}
    trainer = FinetuneTrainer(model, stage.optimizer, loss_fn, scheduler=stage.scheduler, max_epochs=epochs,
                              seed=seed, device="cpu", progress=False, out_dir=None, **options)
    started = time.perf_counter()
    trainer.fit(loader(data, job, "train", seed))
    seconds = time.perf_counter() - started
    return {**scores(model, data, job), "seconds": seconds, "trainable": count_trainable(model)}


def count_trainable(model: torch.nn.Module) -> int:
    """Parameters with ``requires_grad`` after training (the method's trainable set)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def mean_sd(values: list[float], digits: int) -> str:
    """``mean ± sample standard deviation``; ``-`` where a value is undefined (NaN)."""
    if any(math.isnan(v) for v in values):
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def metric_columns(task: str) -> list[tuple[str, str, int, bool]]:
    """``(key, heading, digits, higher is better)`` of each reported metric."""
    if task == "polarity":
        return [("accuracy", "test accuracy (%)", 1, True)]
    return [("rmse", "test RMSE (rating points)", 3, False), ("pearson", "test Pearson r", 3, True)]


def table(task: str, rows: dict[str, list[dict[str, float]]]) -> str:
    """A markdown table: mean ± sd and each seed of every metric, trainable parameters, seconds of training."""
    columns = metric_columns(task)
    head = "| method | " + " | ".join(f"{h} | per seed" for _, h, _, _ in columns) + " | trainable | s (training) |"
    lines = [head, "|---|" + "---:|---|" * len(columns) + "---:|---:|"]
    for name, runs in rows.items():
        cells = []
        for key, _, digits, _ in columns:
            values = [r[key] for r in runs]
            cells += [mean_sd(values, digits), " / ".join("-" if math.isnan(v) else f"{v:.{digits}f}" for v in values)]
        trainable = f"{runs[0]['trainable']:,}" if "trainable" in runs[0] else "0"
        seconds = f"{statistics.mean(r['seconds'] for r in runs):.0f}" if "seconds" in runs[0] else "-"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {trainable} | {seconds} |")
    return "\n".join(lines)


def wins(task: str, rows: dict[str, list[dict[str, float]]], lora: str, full: str) -> str:
    """On how many seeds ``lora`` beats ``full``, per metric, and the mean difference."""
    parts = []
    for key, heading, digits, higher in metric_columns(task):
        differences = [a[key] - b[key] for a, b in zip(rows[lora], rows[full])]
        better = sum((d > 0) if higher else (d < 0) for d in differences)
        parts.append(f"{heading}: LoRA better on {better} of {len(differences)} seeds, LoRA - full = "
                     f"{statistics.mean(differences):+.{digits}f} (per seed "
                     f"{' / '.join(f'{d:+.{digits}f}' for d in differences)})")
    return "; ".join(parts)


def row_names(task: str, job: Any, epochs: int, reference: bool) -> list[str]:
    """The rows of a task's table: the constant baseline, the probe, full, LoRA (and full at the job's epochs)."""
    names = ["majority class" if task == "polarity" else "constant: the labelled words' mean rating",
             "linear probe (frozen mean-pooled embeddings)", f"full fine-tune, {epochs} epochs",
             f"LoRA (r={job.lora.r}, alpha={job.lora.alpha:g}), {epochs} epochs"]
    if reference:
        names.append(f"{FULL_AT_JOB_EPOCHS} ({job.finetune.trainer.max_epochs})")
    return names


def report(tasks: dict[str, dict[str, list[dict[str, float]]]], job: Any, reference: bool) -> None:
    """Each task's table and LoRA's wins over the full fine-tune (on the seeds every row has finished)."""
    for task, rows in tasks.items():
        names = list(rows)
        print(f"\n## {task}\n\n{table(task, rows)}\n\n{wins(task, rows, names[3], names[2])}", flush=True)
        if reference:
            print(f"against the full fine-tune at the job's {job.finetune.trainer.max_epochs} epochs: "
                  f"{wins(task, rows, names[3], names[4])}")


def run_seed(seed: int, task_names: list[str], epochs: int, reference: bool, overrides: list[str],
             limit: int | None, threads: int | None) -> dict[str, dict[str, dict[str, float]]]:
    """Every method on every task for one trainer seed: ``{task: {row name: figures}}`` (a worker process's job)."""
    if threads is not None:
        torch.set_num_threads(threads)
    job = load_settings(overrides)
    finished: dict[str, dict[str, dict[str, float]]] = {}
    for task in task_names:
        data = build_data(job, task, limit)
        names = row_names(task, job, epochs, reference)
        runs = [("probe", names[1], 0), ("full", names[2], epochs), ("lora", names[3], epochs)]
        if reference:
            runs.append(("full", names[4], job.finetune.trainer.max_epochs))
        finished[task] = {names[0]: constant_baseline(data)}
        for method, name, method_epochs in runs:
            finished[task][name] = train(method, data, job, seed, method_epochs)
            print(f"{task} seed {seed} {name}: " + ", ".join(f"{k} {v:.4f}" for k, v in finished[task][name].items()),
                  flush=True)
    return finished


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="trainer seeds 0..n-1 (the split stays seed 0)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs of both the full fine-tune and LoRA (default: the job's LoRA epochs)")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--job-epochs-reference", action="store_true",
                        help="also the full fine-tune at the job's own epochs (3)")
    parser.add_argument("--workers", type=int, default=1,
                        help="seeds run in this many processes at once, each with --threads torch threads")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="write every finished seed's figures here")
    parser.add_argument("--dry-run", action="store_true", help="64 words, one epoch, one seed")
    args = parser.parse_args()
    overrides = ["probe.trainer.max_epochs=1", "finetune.trainer.max_epochs=1"] if args.dry_run else []
    job = load_settings(overrides)
    epochs = 1 if args.dry_run else (args.epochs or job.lora.trainer.max_epochs)
    reference = args.job_epochs_reference and job.finetune.trainer.max_epochs != epochs
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"# {machine(torch.device('cpu'))}; {args.workers} worker process(es)")
    print(f"# both methods {epochs} epochs (full at lr {job.finetune.optimizer.lr:g}, LoRA r={job.lora.r} "
          f"alpha={job.lora.alpha:g} at lr {job.lora.optimizer.lr:g})", flush=True)
    for task in args.tasks:
        data = build_data(job, task, 64 if args.dry_run else None)
        print(f"# {task}: {len(data['labelled']):,} labelled training words of {len(data['splits'].train):,}, "
              f"{len(data['test_set']):,} test words", flush=True)
    started = time.perf_counter()
    seeds = list(range(1 if args.dry_run else args.seeds))
    options = (args.tasks, epochs, reference, overrides, 64 if args.dry_run else None, args.threads)
    by_seed: dict[int, Any] = {}
    with concurrent.futures.ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(run_seed, seed, *options): seed for seed in seeds}
        for future in concurrent.futures.as_completed(futures):
            by_seed[futures[future]] = future.result()
            if args.json is not None:
                args.json.write_text(json.dumps({str(s): by_seed[s] for s in sorted(by_seed)}, indent=1))
    tasks = {task: {name: [by_seed[s][task][name] for s in seeds] for name in row_names(task, job, epochs, reference)}
             for task in args.tasks}
    report(tasks, job, reference)
    print(f"\n# total {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
