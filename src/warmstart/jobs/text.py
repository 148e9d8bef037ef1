"""``warmstart run`` with ``task: text``: baselines, full fine-tuning and LoRA of a transformer, then a tiny student.

Every method trains on the same labelled words of a seeded split of the VADER lexicon; the other training
words are unlabelled, for the teacher to label. Choices (the teacher) use the validation split and test
accuracy is measured once per model. Each row records its trainable parameters, the memory it added (peak
RSS above its start) and its seconds.
"""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from warmstart._memory import measured
from warmstart.data import CharNgramTokenizer, TextSet, TextSplits, labelled_split, text_loader, vader_lexicon
from warmstart.distill import SoftLabelTrainer, ngram_classifier, teacher_probabilities
from warmstart.errors import ConfigError
from warmstart.finetune import FinetuneTrainer, load_text_classifier, load_tokenizer
from warmstart.jobs.runner import (JobRun, Method, Trained, check_lora_targets, check_stages, finetune_method, in_section,
                                   run_job)
from warmstart.jobs.schema import TextPipelineJob
from warmstart.jobs.stages import resolve_seed
from warmstart.proximal import check_lam
from warmstart.trainer import Trainer

LABELS = {"majority": "majority class", "linear_probe": "linear probe (frozen mean-pooled embeddings)",
          "scratch": "full fine-tune from random weights (control)", "full": "full fine-tune", "lora": "LoRA",
          "lora_proximal": "LoRA + proximal term"}
CONTROLS = {"full": "scratch", "lora": "scratch", "lora_proximal": "lora"}
STAGES = {"linear_probe": "probe", "scratch": "finetune", "full": "finetune", "lora": "lora", "lora_proximal": "lora"}


@dataclasses.dataclass
class TextData:
    """The splits, the training split's labelled and unlabelled parts, the model's tokenizer and its loaders
    (``train(seed)`` makes a fresh shuffled loader over the labelled words, so that every method of a seed sees them
    in the same order: a shared loader's generator would go on from where the previous method left it)."""

    splits: TextSplits
    labelled: TextSet
    unlabelled: TextSet
    tokenizer: Any
    max_length: int
    train: Callable[[int], Any]
    val: Any
    test: Any


def run_text_pipeline(job: TextPipelineJob, progress: bool = True) -> dict[str, Any]:
    """Run ``job``; returns ``results.json`` (see :func:`warmstart.jobs.runner.run_job`).

    1. Baselines: the majority class, and the library's linear probe (the head alone, on the frozen
       model's mean-pooled embeddings: ``FinetuneTrainer(method="linear_probe")`` on
       ``load_text_classifier(..., pooling="mean")``).
    2. Full fine-tuning (beside its control from random weights), LoRA, and LoRA with the proximal term.
    3. The teacher (LoRA unless another fine-tuned model beats it on validation beyond chance)
       labels the words with :func:`warmstart.distill.teacher_probabilities`; a character n-gram
       student learns them with :class:`warmstart.distill.SoftLabelTrainer`, beside the same
       student on the hard labels, on the raters' label distributions, on the hard labels for as
       many optimizer steps, and on every training label (a reference).

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
    check_text_job(job)
    data = _text_data(job)
    _check_model_options(job, data)
    methods = [Method(m, LABELS[m], _method(m), CONTROLS.get(m), teacher=m in CONTROLS) for m in job.methods]
    stage = job.distill
    students = [("student_hard", "student, hard labels (control)", "labelled", None),
                ("student_human", "student, the raters' label distributions", "human", "student_hard"),
                ("student_teacher_labelled", "student distilled, labelled words", "teacher_labelled", "student_hard"),
                ("student_teacher", "student distilled, labelled + unlabelled words", "teacher_all",
                 ("student_hard_same_steps", "student_hard")),
                ("student_hard_same_steps", "student, hard labels, as many optimizer steps (control)", "same_steps", None),
                ("student_all_labels", "reference: student on every training label, the hidden ones too", "all", None)]
    methods += [Method(name, label, _student(name, part), control, student=True)
                for name, label, part, control in students]
    story = (f"`{job.model}` on the `{job.data.task}` task of the VADER lexicon: {len(data.labelled):,} labelled and "
             f"{len(data.unlabelled):,} unlabelled training words, {len(data.splits.val):,} for validation (the "
             f"choices) and {len(data.splits.test):,} for the test, measured once per model. The students are "
             f"`ngram_classifier(buckets={stage.buckets}, dim={stage.dim})` on hashed character n-grams.")
    folders = (*LABELS, *(f"distill/{name}" for name, *_ in students))
    seeds = job.seeds or [job.trainer.seed]
    return run_job(job, methods, data=data, test=data.test, val=data.val, title="warmstart run report (text)",
                   story=story, progress=progress, seeds=seeds, default_teacher="lora",
                   stages=folders if len(seeds) == 1 else tuple(f"seed{seed}/{f}" for seed in seeds for f in folders))


def check_text_job(job: TextPipelineJob) -> None:
    """Check every setting the run will use, before any data, model or step: each stage the methods run (and
    ``distill``) and the LoRA options (:func:`warmstart.jobs.runner.check_stages`), the student and its tokenizer,
    and the proximal ``lam``.

    Raises:
        ConfigError: naming the stage's section (``lora.trainer.precision``, ...) and the fix.
    """
    check_stages(job, [*dict.fromkeys(STAGES[m] for m in job.methods if m in STAGES), "distill"])
    student = job.distill
    in_section("distill", lambda: SoftLabelTrainer(nn.Linear(1, 2), temperature=student.temperature, alpha=student.alpha,
                                                    device="cpu", progress=False))
    in_section("distill", lambda: (CharNgramTokenizer(student.buckets, student.ngrams),
                                    ngram_classifier(student.buckets, student.dim, 2)))
    if "lora_proximal" in job.methods:
        in_section("lora.proximal", lambda: check_lam(job.lora.proximal))


def _pretrained(job: TextPipelineJob, data: TextData, seed: int, pretrained: bool = True, pooling: str = "cls") -> nn.Module:
    """A fresh copy of the model with a new head, the same head weights for every method (``pretrained=False``: the
    same architecture from random weights)."""
    torch.manual_seed(seed)
    model, _ = load_text_classifier(job.model, num_labels=data.splits.num_classes, pretrained=pretrained,
                                    pooling=pooling)
    return model


def _check_model_options(job: TextPipelineJob, data: TextData) -> None:
    """Load the model once and check its tokenizer and the LoRA targets against it, before any method trains.

    Raises:
        ConfigError: a tokenizer with more token ids than the model embeds, or a LoRA target the model lacks.
    """
    model = _pretrained(job, data, 0)
    tokens, rows = len(data.tokenizer), model.get_input_embeddings().num_embeddings
    if tokens > rows:
        raise ConfigError(f"model: the tokenizer of '{job.model}' has {tokens:,} token ids, but the model embeds "
                          f"only {rows:,}: they are not a pair (ids past {rows - 1} would fail inside the model). Save "
                          "the model with the tokenizer it was trained with.")
    check_lora_targets(job, model)


def _text_data(job: TextPipelineJob) -> TextData:
    cfg = job.data
    splits = vader_lexicon(cfg.task, seed=cfg.split_seed, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction)
    if cfg.limit is not None:  # every k-th text of each split, so both classes stay
        splits = dataclasses.replace(splits, **{part: getattr(splits, part).subset(
            np.arange(0, len(getattr(splits, part)), max(1, len(getattr(splits, part)) // cfg.limit))[:cfg.limit])
            for part in ("train", "val", "test")})
    labelled, unlabelled = labelled_split(splits.train, cfg.labelled, seed=cfg.split_seed)
    tokenizer = load_tokenizer(job.model)

    def loader(data: TextSet, seed: int | None = None) -> Any:
        size = cfg.batch_size if seed is not None else cfg.eval_batch_size
        return text_loader(data, tokenizer, size, shuffle=seed is not None, seed=seed or 0, max_length=cfg.max_length)

    return TextData(splits, labelled, unlabelled, tokenizer, cfg.max_length, lambda seed: loader(labelled, seed),
                    loader(splits.val), loader(splits.test))


class _Majority(nn.Module):
    """Always the most frequent class of the labelled words (no parameters)."""

    def __init__(self, label: int, classes: int):
        super().__init__()
        self.register_buffer("logits", torch.nn.functional.one_hot(torch.tensor(label), classes).float())

    def forward(self, input_ids: torch.Tensor, **_: Any) -> torch.Tensor:
        return self.logits.expand(len(input_ids), -1)


def _folder(run: JobRun, seed: int, name: str) -> str:
    """A method's folder: ``name``, under ``seed<k>/`` when the job runs several seeds."""
    return name if len(run.seeds) == 1 else f"seed{seed}/{name}"


def _method(name: str) -> Any:
    """Train the transformer by method ``name`` (the majority class: no training)."""

    def train(run: JobRun, seed: int) -> Trained:
        job, data = run.job, run.data
        gc.collect()  # each method's memory starts from the same base: nothing of the last one left
        if name == "majority":
            label = int(torch.bincount(data.labelled.labels).argmax())
            return Trained(_Majority(label, data.splits.num_classes), facts={"class": data.splits.classes[label]})
        with measured() as cost:
            model = _pretrained(job, data, seed, pretrained=name != "scratch",
                                pooling="mean" if name == "linear_probe" else "cls")
            stage = getattr(job, STAGES[name])
            options = {**finetune_method(name, stage), **({"proximal": stage.proximal} if name == "lora_proximal" else {})}
            folder = _folder(run, seed, name)
            history = run.trainer(FinetuneTrainer, model, stage, folder, seed, **options).fit(data.train(seed), data.val)
        weights = run.out / folder / "last.safetensors"
        facts = {"memory_mb": round(cost["peak_rss_mb"] - cost["start_rss_mb"], 1),
                 **({"checkpoint_bytes": weights.stat().st_size} if weights.is_file() else {})}
        return Trained(model.eval(), history, facts=facts, weights=weights)

    return train


def _student(name: str, part: str) -> Any:
    """The character n-gram student on one kind of labels: ``labelled`` (hard), ``human`` (the raters'
    distributions), ``teacher_labelled`` / ``teacher_all`` (the teacher's probabilities for the labelled / all
    training words), ``same_steps`` (hard, as many steps as ``teacher_all``), ``all`` (every training label)."""

    def train(run: JobRun, seed: int) -> Trained | None:
        job, data, stage = run.job, run.data, run.job.distill
        if (part in ("teacher_all", "same_steps", "all") and not len(data.unlabelled)) or \
                (part.startswith("teacher") or part == "same_steps") and run.teacher is None:
            return None  # no unlabelled words, or no fine-tuned model to teach
        texts = data.labelled.texts + data.unlabelled.texts
        if part.startswith("teacher"):
            words = text_loader(TextSet(texts, None), data.tokenizer, 512, max_length=data.max_length)
            soft = teacher_probabilities(run.trained[run.teacher].model, words)
            count = len(data.labelled) if part == "teacher_labelled" else len(texts)
            train_set, cls = TextSet(texts[:count], None, soft[:count]), SoftLabelTrainer
            options: dict[str, Any] = {"temperature": stage.temperature, "alpha": 1.0}
        else:
            train_set = data.splits.train if part == "all" else data.labelled
            cls, options = (SoftLabelTrainer, {"temperature": stage.temperature, "alpha": stage.alpha}) \
                if part == "human" else (Trainer, {})
        if part == "same_steps":
            steps = run.rows["student_teacher"][-1]["steps"]
            stage = dataclasses.replace(stage, trainer=dataclasses.replace(stage.trainer, max_epochs=None,
                                                                           max_steps=steps))
        tokenizer = CharNgramTokenizer(stage.buckets, stage.ngrams)
        loaders = {key: text_loader(words, tokenizer, job.data.batch_size if key == "train" else job.data.eval_batch_size,
                                    shuffle=key == "train", seed=seed, max_length=None)
                   for key, words in (("train", train_set), ("val", data.splits.val), ("test", data.splits.test))}
        torch.manual_seed(seed)
        student = ngram_classifier(stage.buckets, stage.dim, data.splits.num_classes)
        trainer = run.trainer(cls, student, stage, _folder(run, seed, f"distill/{name}"), seed, **options)
        history = trainer.fit(loaders["train"], loaders["val"])
        facts = {"steps": trainer.global_step, **({"teacher": run.teacher} if part.startswith("teacher") else {})}
        return Trained(student.eval(), history, test=trainer.evaluate(loaders["test"]),
                       val=trainer.evaluate(loaders["val"]), facts=facts)

    return train
