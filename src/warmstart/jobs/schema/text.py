"""``warmstart run`` with ``task: text``: a pretrained transformer fine-tuned and with LoRA, then a tiny student."""

from __future__ import annotations

import dataclasses
from typing import Literal

from warmstart.config import TrainerConfig
from warmstart.errors import ConfigError
from warmstart.jobs.schema.common import LoraStage, StageConfig, check_task_job

TEXT_METHODS = ("majority", "linear_probe", "scratch", "full", "lora", "lora_proximal")


@dataclasses.dataclass
class TextDataConfig:
    """The ``data:`` section of a text job.

    Attributes:
        name: the data set: ``vader_lexicon`` (ships inside ``vadersentiment``; see
            :func:`warmstart.data.vader_lexicon`).
        task: ``polarity`` (positive or negative, from words with ``|valence| >= 1``).
        split_seed: seed of the stratified train/validation/test split (and of ``labelled``).
        val_fraction: share held out for validation (choices: the teacher).
        test_fraction: share held out for testing (measured once per model).
        labelled: share of each class of the training split whose labels the methods use; the
            rest is unlabelled (no method sees those labels): the teacher labels it for the
            distilled student. 1.0: every training label is used.
        max_length: truncate texts to this many tokens (the lexicon's longest entry has 11).
        batch_size: training batch size.
        eval_batch_size: evaluation batch size.
        limit: use at most this many texts of each split (quick runs and tests; ``None``: all).
    """

    name: Literal["vader_lexicon"] = "vader_lexicon"
    task: Literal["polarity"] = "polarity"
    split_seed: int = 0
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    labelled: float = 0.25
    max_length: int = 16
    batch_size: int = 32
    eval_batch_size: int = 256
    limit: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_length", "batch_size", "eval_batch_size", "limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"data.{name} must be >= 1, got {value}")
        if not 0 < self.labelled <= 1:
            raise ConfigError(f"data.labelled (the share of training labels used) must be in (0, 1], got {self.labelled}")


@dataclasses.dataclass
class TextLoraStage(LoraStage):
    """The LoRA stage of a text job, and the ``lora_proximal`` method's term.

    Attributes:
        proximal: ``lam`` of the ``lora_proximal`` method's proximal term (toward the adapters' start;
            the data term is weighted by ``lam``, so a larger value pulls less).
    """

    proximal: float = 100.0


@dataclasses.dataclass
class TextDistillStage(StageConfig):
    """The distillation stage of a text job: the best model (by validation accuracy) teaches a tiny student.

    The student is :func:`warmstart.distill.ngram_classifier` over hashed character n-grams
    (:class:`warmstart.data.CharNgramTokenizer`), trained with the same settings on: the hard
    labels; the raters' label distributions (``alpha`` of them, ``1 - alpha`` hard labels); the
    teacher's probabilities for the labelled words; and the teacher's probabilities for the
    labelled and the unlabelled words (``data.labelled``). A reference row trains it on every
    training label, the hidden ones too: what the labels the teacher stands in for would give.

    Attributes:
        buckets: n-gram ids (the student's embedding rows).
        dim: the student's embedding width.
        ngrams: the n-gram lengths.
        temperature: softmax temperature of the soft-label losses.
        alpha: weight of the raters' distributions against the hard labels; the teacher's
            students use ``alpha = 1`` (the unlabelled words have no hard label).
    """

    buckets: int = 4096
    dim: int = 32
    ngrams: list[int] = dataclasses.field(default_factory=lambda: [2, 3, 4])
    temperature: float = 2.0
    alpha: float = 0.5


@dataclasses.dataclass
class TextPipelineJob:
    """``warmstart run CONFIG`` with ``task: text``: fine-tune a pretrained transformer, LoRA, distil, report.

    Baselines (majority class; a linear probe: logistic regression on the frozen model's
    mean-pooled embeddings), full fine-tuning, LoRA and LoRA with the proximal term each train on
    the same labelled words; the model with the best validation accuracy then teaches a tiny
    student on the labelled and the unlabelled words.

    Attributes:
        task: ``text`` (what selects this schema).
        out_dir: the run folder (results.json, report.md, plots, each method's checkpoints).
        trainer: trainer settings shared by every stage (``seed``, ``device``, ``precision``, ...).
        seeds: run every method and student once per seed (``None``: ``trainer.seed`` alone): the
            report gives mean +- sd and each method's wins over its control. The data split stays
            ``data.split_seed``'s; a seed draws the heads, the students and the order of the batches.
        data: the text data set.
        model: ``all-MiniLM-L6-v2`` (bundled), a folder with a Hugging Face checkpoint, or a Hub name.
        methods: which of ``majority``, ``linear_probe``, ``scratch`` (the full fine-tune from random
            weights: the control), ``full``, ``lora``, ``lora_proximal`` to run.
        probe: the linear probe's training (on cached embeddings).
        finetune: full fine-tuning.
        lora: LoRA (and ``lora_proximal``).
        distill: the student and its trainings.
    """

    task: Literal["text"] = "text"
    out_dir: str = "runs/text_sentiment"
    trainer: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)
    seeds: list[int] | None = None
    data: TextDataConfig = dataclasses.field(default_factory=TextDataConfig)
    model: str = "all-MiniLM-L6-v2"
    methods: list[str] = dataclasses.field(default_factory=lambda: list(TEXT_METHODS))
    probe: StageConfig = dataclasses.field(default_factory=StageConfig)
    finetune: StageConfig = dataclasses.field(default_factory=StageConfig)
    lora: TextLoraStage = dataclasses.field(default_factory=TextLoraStage)
    distill: TextDistillStage = dataclasses.field(default_factory=TextDistillStage)

    def __post_init__(self) -> None:
        check_task_job(self.trainer, self.methods, TEXT_METHODS, "text", self.seeds)

