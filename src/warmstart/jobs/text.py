"""``warmstart run`` with ``task: text``: baselines, full fine-tuning and LoRA of a transformer, then a tiny student.

Every method trains on the same labelled words of a seeded split of the VADER lexicon; the other
training words are unlabelled, for the teacher to label. Choices (the teacher) use the validation
split and test accuracy is measured once per model. Each row records its trainable parameters,
peak memory (RSS) and seconds per epoch.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from warmstart._run_dir import check_out_dir, job_lock
from warmstart.config import save_config
from warmstart.data import (CharNgramTokenizer, TextSet, TextSplits, labelled_split, text_loader,
                            vader_lexicon)
from warmstart.distill import SoftLabelTrainer, ngram_classifier
from warmstart.errors import ConfigError
from warmstart.finetune import (FinetuneTrainer, load_adapter, load_pretrained, load_text_classifier, load_tokenizer,
                                resolve_targets)
from warmstart.finetune.lora import check_lora_options, require_peft
from warmstart.jobs._memory import measured
from warmstart.jobs.schema import StageConfig, TextPipelineJob
from warmstart.jobs.stages import check_settings, recorded_job, rerun_command, resolve_seed
from warmstart.jobs.text_report import LABELS, print_text_table, write_text_report
from warmstart.proximal import check_lam
from warmstart.trainer import Trainer

TEACHERS = ("full", "lora", "lora_proximal")
STUDENTS = ("student_hard", "student_human", "student_teacher_labelled", "student_teacher", "student_hard_same_steps",
            "student_all_labels")


@dataclasses.dataclass
class TextData:
    """The splits, the training split's labelled and unlabelled parts, the model's tokenizer and loaders.

    ``train`` iterates over the labelled words only.
    """

    splits: TextSplits
    labelled: TextSet
    unlabelled: TextSet
    tokenizer: Any
    max_length: int
    train: Any
    val: Any
    test: Any


class _TextRun:
    """One text pipeline run: its folder, data and results."""

    def __init__(self, job: TextPipelineJob, progress: bool):
        self.job, self.out, self.progress = job, Path(job.out_dir).expanduser(), progress
        self.seed: int = job.trainer.seed  # type: ignore[assignment]  (resolved before the run starts)
        self.results: dict[str, dict[str, Any]] = {}
        self.curves: dict[str, list[dict[str, Any]]] = {}
        self.data: TextData | None = None

    def trainer(self, cls: type[Trainer], model: nn.Module, stage: StageConfig, folder: str, **options: Any) -> Trainer:
        """A trainer with the stage's settings writing into ``out_dir/folder`` (replacing the earlier run's there when
        the job may overwrite), the whole job recorded in checkpoints."""
        seed = self.seed if stage.trainer.seed is None else stage.trainer.seed
        config = dataclasses.replace(stage.trainer, out_dir=str(self.out / folder), seed=seed,
                                     progress=stage.trainer.progress and self.progress,
                                     overwrite=stage.trainer.overwrite or self.job.trainer.overwrite)
        trainer = cls(model, copy.deepcopy(stage.optimizer), config=config, scheduler=copy.deepcopy(stage.scheduler),
                      **options)
        trainer.job_config = recorded_job(self.job)
        return trainer

    def pretrained(self, pretrained: bool = True, pooling: str = "cls") -> tuple[nn.Module, Any]:
        """A fresh copy of the pretrained model with a new head, the same head weights for every method
        (``pretrained=False``: the same architecture from random weights; ``pooling``: see
        :func:`warmstart.finetune.load_text_classifier`)."""
        torch.manual_seed(self.seed)
        return load_text_classifier(self.job.model, num_labels=self.data.splits.num_classes, pretrained=pretrained,
                                    pooling=pooling)

    def heading(self, text: str) -> None:
        if self.progress:
            print(f"\n== {text} ==", flush=True)

    def record(self, name: str, row: dict[str, Any], history: list[dict[str, Any]]) -> None:
        self.results[name] = {k: round(v, 6 if "accuracy" in k else 4) if isinstance(v, float) else v for k, v in row.items()}
        self.curves[name] = history
        val = f", validation {100 * row['val_accuracy']:.1f}%" if "val_accuracy" in row else ""
        print(f"[warmstart run] {LABELS.get(name, name)}: test accuracy {100 * row['accuracy']:.1f}%{val}, "
              f"{row['trainable']:,} trainable parameters ({row['seconds']:.1f} s)", flush=True)


def run_text_pipeline(job: TextPipelineJob, progress: bool = True) -> dict[str, dict[str, Any]]:
    """Run ``job`` and return ``{method: {"accuracy", "val_accuracy", "trainable", "params", "peak_rss_mb", ...}}``.

    1. Baselines: the majority class, and the library's linear probe (the head alone, on the frozen
       model's mean-pooled embeddings: ``FinetuneTrainer(method="linear_probe")`` on
       ``load_text_classifier(..., pooling="mean")``).
    2. Full fine-tuning, LoRA, and LoRA with the proximal term, on the labelled words.
    3. The fine-tuned model with the best validation accuracy teaches a character n-gram student on
       the labelled and the unlabelled words, next to the same student trained on the hard labels
       and on the raters' label distributions (see :class:`warmstart.jobs.TextDistillStage`), and
       on the hard labels for as many optimizer steps as the distillation on both took.

    Writes ``results.json``, ``report.md``, plots and each method's checkpoints into ``job.out_dir``.
    Every setting the run will use (each stage's trainer, optimizer and schedule, the LoRA options
    and targets against the model) is checked before ``out_dir`` is claimed or any step trained.

    Raises:
        ConfigError: bad settings (e.g. a LoRA target the model does not have, a precision the
            device cannot run), before anything is written or trained.
        OutDirBusyError: another run holds ``out_dir``.
        RunExistsError: ``out_dir`` holds an earlier run (its files, or its methods' folders) and
            ``trainer.overwrite`` is False (``--overwrite``).
    """
    resolve_seed(job)
    out = check_out_dir(job.out_dir)
    check_text_job(job)
    started = time.perf_counter()
    run = _TextRun(job, progress)
    run.data = _text_data(job, run.seed)
    _check_model_options(run)  # before the lock: with overwrite, it deletes the earlier run
    stages = (*(method for method in METHODS if method != "majority"), *(f"distill/{name}" for name in STUDENTS))
    with job_lock(out, job.trainer.overwrite, stages=stages):
        save_config(recorded_job(job), out / "job.yaml")
        for method in job.methods:
            gc.collect()  # each method's peak memory starts from the same base: no model of the last one left
            METHODS[method](run)
        _distill(run)
        run.results["total"] = {"seconds": round(time.perf_counter() - started, 2)}
        write_text_report(out, job, run.results, run.curves, command=rerun_command(out))
    print_text_table(run.results)
    print(f"[warmstart run] wrote {out / 'results.json'}, {out / 'report.md'} and plots")
    return run.results


def check_text_job(job: TextPipelineJob) -> None:
    """Check every setting the run will use, before any data, model or step: what training would meet late.

    Each stage the job's methods run (``probe``, ``finetune``, ``lora``, and ``distill`` always)
    has its trainer, optimizer and schedule checked (:func:`warmstart.jobs.stages.check_settings`),
    so that a device, precision, optimizer or schedule it cannot run is refused now; the LoRA options are checked
    as :func:`warmstart.finetune.add_lora` would check them, and the student and its tokenizer
    are built once.

    Raises:
        ConfigError: naming the stage's section (``lora.trainer.precision``, ...) and the fix.

    Examples:
        >>> check_text_job(load_job("run", "configs/text_sentiment.yaml"))  # doctest: +SKIP
    """
    for section in _sections(job.methods):
        stage = getattr(job, section)
        check_settings(stage.trainer, stage.optimizer, stage.scheduler, where=section)
    student = job.distill
    _in_section("distill", lambda: SoftLabelTrainer(nn.Linear(1, 2), temperature=student.temperature, alpha=student.alpha,
                                                    device="cpu", progress=False))
    _in_section("distill", lambda: (CharNgramTokenizer(student.buckets, student.ngrams),
                                    ngram_classifier(student.buckets, student.dim, 2)))
    if "lora" in _sections(job.methods):
        lora = job.lora
        _in_section("lora", lambda: check_lora_options(lora.r, lora.alpha, lora.dropout, lora.targets))
        require_peft()
    if "lora_proximal" in job.methods:
        _in_section("lora.proximal", lambda: check_lam(job.lora.proximal))


def _sections(methods: list[str]) -> list[str]:
    """The config sections of the stages that ``methods`` run (the students always train)."""
    used = {"linear_probe": "probe", "scratch": "finetune", "full": "finetune", "lora": "lora", "lora_proximal": "lora"}
    return [*dict.fromkeys(used[m] for m in methods if m in used), "distill"]


def _in_section(section: str, check: Callable[[], None]) -> None:
    try:
        check()
    except ConfigError as err:
        raise ConfigError(f"{section}: {err}") from None


def _check_model_options(run: _TextRun) -> None:
    """Load the model once and check its tokenizer and the LoRA targets against it, before the first step of any method.

    Raises:
        ConfigError: a tokenizer with more token ids than the model embeds, or a LoRA target the
            model does not have.
    """
    model, _ = run.pretrained()
    tokens, rows = len(run.data.tokenizer), model.get_input_embeddings().num_embeddings
    if tokens > rows:
        raise ConfigError(f"model: the tokenizer of '{run.job.model}' has {tokens:,} token ids, but the model embeds "
                          f"only {rows:,}: they are not a pair (ids past {rows - 1} would fail inside the model). Save "
                          "the model with the tokenizer it was trained with.")
    if "lora" in _sections(run.job.methods):
        _in_section("lora.targets", lambda: resolve_targets(model, run.job.lora.targets))


def _text_data(job: TextPipelineJob, seed: int) -> TextData:
    cfg = job.data
    splits = vader_lexicon(cfg.task, seed=cfg.split_seed, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction)
    if cfg.limit is not None:
        splits = dataclasses.replace(splits, **{part: _first(getattr(splits, part), cfg.limit)
                                                for part in ("train", "val", "test")})
    labelled, unlabelled = labelled_split(splits.train, cfg.labelled, seed=cfg.split_seed)
    tokenizer = load_tokenizer(job.model)

    def loader(data: TextSet, train: bool = False) -> Any:
        size = cfg.batch_size if train else cfg.eval_batch_size
        return text_loader(data, tokenizer, size, shuffle=train, seed=seed, max_length=cfg.max_length)

    return TextData(splits, labelled, unlabelled, tokenizer, cfg.max_length, loader(labelled, train=True),
                    loader(splits.val), loader(splits.test))


def _first(data: TextSet, limit: int) -> TextSet:
    """A stratified-enough quick subset: every k-th text, so both classes stay."""
    step = max(1, len(data) // limit)
    return data.subset(np.arange(0, len(data), step)[:limit])


# ---------------------------------------------------------------------------------------------- baselines


def _majority(run: _TextRun) -> None:
    """Always answer the most frequent class of the labelled words."""
    splits = run.data.splits
    majority = int(torch.bincount(run.data.labelled.labels).argmax())
    row = {"accuracy": _share(splits.test.labels == majority), "val_accuracy": _share(splits.val.labels == majority),
           "trainable": 0, "params": 0, "seconds": 0.0, "class": splits.classes[majority]}
    run.record("majority", row, [])


def _share(hits: torch.Tensor) -> float:
    return float(hits.float().mean())


def _linear_probe(run: _TextRun) -> None:
    """The library's linear probe on the frozen model's mean-pooled embeddings: ``FinetuneTrainer(method="linear_probe")``
    on the model loaded with ``pooling="mean"``, its head trained on the features cached once."""
    data, stage = run.data, run.job.probe
    run.heading(f"linear probe: the head alone on frozen mean-pooled {run.job.model} embeddings")
    with measured() as cost:
        model, _ = run.pretrained(pooling="mean")
        trainer = run.trainer(FinetuneTrainer, model, stage, "linear_probe", method="linear_probe")
        history = trainer.fit(data.train, data.val)
        test = trainer.evaluate(data.test)
    run.record("linear_probe", _row(test, history, model, model, cost), history)


def _in_dataset_order(rows: torch.Tensor, loader: Any) -> torch.Tensor:
    order = getattr(loader.dataset, "order", None)
    if order is None:
        return rows
    out = torch.empty_like(rows)
    out[order] = rows
    return out


# ---------------------------------------------------------------------------------------------- fine-tuning


def _full(run: _TextRun) -> None:
    run.heading(f"full fine-tune of {run.job.model} ({run.job.finetune.trainer.epochs} epochs)")
    _fine_tune(run, "full", run.job.finetune, {"method": {"name": "full", "backbone_lr_mult": 1.0}})


def _scratch(run: _TextRun) -> None:
    run.heading(f"the same full fine-tune from random weights, the control ({run.job.finetune.trainer.epochs} "
                "epochs)")
    _fine_tune(run, "scratch", run.job.finetune, {"method": {"name": "full", "backbone_lr_mult": 1.0}},
               pretrained=False)


def _lora(run: _TextRun, proximal: bool = False) -> None:
    stage = run.job.lora
    name = "lora_proximal" if proximal else "lora"
    run.heading(f"{LABELS[name]} ({stage.trainer.epochs} epochs)")
    options = {"method": "lora", "lora": {"r": stage.r, "alpha": stage.alpha, "targets": stage.targets,
                                           "dropout": stage.dropout}}
    _fine_tune(run, name, stage, {**options, **({"proximal": stage.proximal} if proximal else {})})


def _fine_tune(run: _TextRun, name: str, stage: StageConfig, options: dict[str, Any], pretrained: bool = True) -> None:
    data = run.data
    with measured() as cost:
        model, _ = run.pretrained(pretrained)
        trainer = run.trainer(FinetuneTrainer, model, stage, name, **options)
        history = trainer.fit(data.train, data.val)
        test = trainer.evaluate(data.test)
    weights = run.out / name / "last.safetensors"
    row = _row(test, history, model, model, cost)
    if weights.is_file():
        row["checkpoint_bytes"] = weights.stat().st_size
    run.record(name, row, history)


def _row(test: dict[str, float], history: list[dict[str, Any]], trained: nn.Module, whole: nn.Module,
         cost: dict[str, Any]) -> dict[str, Any]:
    """A result row: accuracy, the last epoch's validation accuracy, parameters, time and memory.

    ``params`` counts the model without LoRA adapters: its size once they are merged.
    """
    return {"accuracy": test["accuracy"], "val_accuracy": history[-1]["val_accuracy"],
            "trainable": sum(p.numel() for p in trained.parameters() if p.requires_grad),
            "params": sum(p.numel() for n, p in whole.named_parameters() if "lora_" not in n), "seconds": cost["seconds"],
            "seconds_per_epoch": float(np.mean([h["seconds"] for h in history])), "peak_rss_mb": cost["peak_rss_mb"]}


METHODS: dict[str, Callable[[_TextRun], None]] = {
    "majority": _majority, "linear_probe": _linear_probe, "scratch": _scratch, "full": _full, "lora": _lora,
    "lora_proximal": lambda run: _lora(run, proximal=True),
}


# ---------------------------------------------------------------------------------------------- distillation


def _distill(run: _TextRun) -> None:
    """The tiny student on: hard labels; the raters' distributions; the teacher's probabilities for the labelled words,
    and for the labelled and unlabelled words, with its fair control (hard labels for as many optimizer steps); and,
    as a reference, every training label."""
    stage, data = run.job.distill, run.data
    tokenizer = CharNgramTokenizer(stage.buckets, stage.ngrams)
    run.heading(f"students: ngram_classifier(buckets={stage.buckets}, dim={stage.dim}) on hashed character n-grams")
    _student(run, "student_hard", tokenizer, data.labelled, Trainer, {})
    human = {"temperature": stage.temperature, "alpha": stage.alpha}
    _student(run, "student_human", tokenizer, data.labelled, SoftLabelTrainer, human)
    candidates = {m: run.results[m]["val_accuracy"] for m in TEACHERS if m in run.results}
    if candidates:
        best = max(candidates, key=candidates.get)  # chosen on validation, never on test
        texts = data.labelled.texts + data.unlabelled.texts
        with measured() as cost:
            probabilities = teacher_probabilities(_load_teacher(run, best), data, texts)
        taught = {"temperature": stage.temperature, "alpha": 1.0}
        facts = {"teacher": best, "teacher_seconds": round(cost["seconds"], 2)}
        labelled = TextSet(data.labelled.texts, None, probabilities[:len(data.labelled)])
        _student(run, "student_teacher_labelled", tokenizer, labelled, SoftLabelTrainer, taught, facts)
        if len(data.unlabelled):
            _student(run, "student_teacher", tokenizer, TextSet(texts, None, probabilities), SoftLabelTrainer, taught,
                     {**facts, "unlabelled": len(data.unlabelled)})
            _student(run, "student_hard_same_steps", tokenizer, data.labelled, Trainer, {},
                     max_steps=run.results["student_teacher"]["steps"])
    if len(data.unlabelled):
        _student(run, "student_all_labels", tokenizer, data.splits.train, Trainer, {})


def _load_teacher(run: _TextRun, name: str) -> nn.Module:
    """The fine-tuned model ``name`` rebuilt from its weights file: the pretrained model and, for LoRA, the adapters."""
    weights = run.out / name / "last.safetensors"
    if not weights.is_file():
        raise ConfigError(f"the text job reloads its teacher from {weights}, which is missing: keep "
                          "trainer.checkpoint true")
    model, _ = run.pretrained()
    (load_pretrained if name == "full" else load_adapter)(model, weights)
    return model


def _student(run: _TextRun, name: str, tokenizer: CharNgramTokenizer, train: TextSet, cls: type[Trainer],
             options: dict[str, Any], facts: dict[str, Any] | None = None, max_steps: int | None = None) -> None:
    """Train the student on ``train`` (``max_steps``: for that many optimizer steps instead of the stage's epochs)."""
    stage, splits, size = run.job.distill, run.data.splits, run.job.data.batch_size
    if max_steps is not None:
        stage = dataclasses.replace(stage, trainer=dataclasses.replace(stage.trainer, max_epochs=None,
                                                                       max_steps=max_steps))
    loaders = {part: text_loader(data, tokenizer, size if part == "train" else run.job.data.eval_batch_size,
                                 shuffle=part == "train", seed=run.seed, max_length=None)
               for part, data in (("train", train), ("val", splits.val), ("test", splits.test))}
    with measured() as cost:
        torch.manual_seed(run.seed)
        student = ngram_classifier(stage.buckets, stage.dim, splits.num_classes)
        trainer = run.trainer(cls, student, stage, f"distill/{name}", **options)
        history = trainer.fit(loaders["train"], loaders["val"])
        test = trainer.evaluate(loaders["test"])
    run.record(name, {**_row(test, history, student, student, cost), **(facts or {}), "steps": trainer.global_step},
               history)


@torch.no_grad()
def teacher_probabilities(model: nn.Module, data: TextData, texts: list[str]) -> torch.Tensor:
    """``(N, C)`` softmax of the model's logits for ``texts``, in their order (the model in eval mode)."""
    loader = text_loader(TextSet(texts, None), data.tokenizer, 512, max_length=data.max_length)
    was_training = model.training
    model.eval()
    logits = [model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.float() for b in loader]
    model.train(was_training)
    return _in_dataset_order(torch.cat(logits).softmax(-1), loader)
