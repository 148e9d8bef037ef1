"""Text data: the VADER sentiment lexicon with seeded stratified splits, character n-gram ids, and padded batches."""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib.util
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from warmstart.data.bundled import _missing
from warmstart.errors import ConfigError, DataError

TASKS = ("polarity", "valence")
POLARITY_CLASSES = ("negative", "positive")
RATINGS = tuple(range(-4, 5))  # the raters' scale


@dataclasses.dataclass
class TextSet(Dataset):
    """Texts with their labels and human label distributions; items are dicts.

    Attributes:
        texts: the texts.
        labels: ``(N,)`` class indices (polarity) or mean valence in ``[-4, 4]`` (valence); ``None``
            for unlabelled texts.
        soft_labels: ``(N, C)`` per-text distributions over the classes (rows sum to 1), e.g. the
            share of raters who chose each class; a teacher's probabilities can replace them.
    """

    texts: list[str]
    labels: torch.Tensor | None
    soft_labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item: dict[str, Any] = {"text": self.texts[index]}
        if self.labels is not None:
            item["labels"] = self.labels[index]
        if self.soft_labels is not None:
            item["soft_labels"] = self.soft_labels[index]
        return item

    def subset(self, rows: Sequence[int] | np.ndarray) -> TextSet:
        """The texts at ``rows``, in that order."""
        index = torch.as_tensor(np.asarray(rows, dtype=np.int64))
        labels = None if self.labels is None else self.labels[index]
        soft = None if self.soft_labels is None else self.soft_labels[index]
        return TextSet([self.texts[i] for i in index.tolist()], labels, soft)


@dataclasses.dataclass
class TextSplits:
    """A text data set's train, validation and test splits.

    Attributes:
        name: the data set's name.
        task: ``"polarity"`` (classes) or ``"valence"`` (regression).
        train: the training split.
        val: the validation split (for choices: epochs, methods, the teacher).
        test: the test split (measured once per model).
        classes: class names of ``labels`` (polarity) or of the ``soft_labels`` columns (valence: the
            ratings -4..4).
    """

    name: str
    task: str
    train: TextSet
    val: TextSet
    test: TextSet
    classes: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        """Outputs a classifier needs: the classes of ``labels`` (polarity) or 1 (valence)."""
        return len(self.classes) if self.task == "polarity" else 1


def vader_lexicon(task: str = "polarity", seed: int = 0, val_fraction: float = 0.2,
                  test_fraction: float = 0.2) -> TextSplits:
    """The VADER sentiment lexicon (words, slang and emoticons rated by 10 people), split by a seed.

    The lexicon ships inside the ``vadersentiment`` package: 7,520 entries, each with the mean
    valence of 10 raters on a -4..4 scale and the 10 ratings. Entries that repeat a text (ignoring
    case) are dropped after their first occurrence, leaving 7,494. The split is stratified (by class;
    for valence by the rounded mean) and fixed by ``seed``.

    - ``task="polarity"``: the 5,810 entries with ``|valence| >= 1``; label 1 (positive) for
      valence >= 1, 0 (negative) for <= -1. ``soft_labels[:, 1]`` is the share of raters who rated
      it positive, counting a 0 rating as half positive, half negative.
    - ``task="valence"``: all 7,494 entries; the label is the mean valence (a float), and
      ``soft_labels`` is the distribution of the 10 ratings over -4..4 (9 columns).

    Args:
        task: ``"polarity"`` or ``"valence"``.
        seed: seed of the split (the same seed gives the same split everywhere).
        val_fraction: share of each stratum held out for validation.
        test_fraction: share of each stratum held out for testing.

    Returns:
        :class:`TextSplits` with ``train``, ``val`` and ``test``.

    Raises:
        ConfigError: an unknown task or fractions that leave no training data.
        DataError: the ``vadersentiment`` package is not installed.

    Examples:
        >>> splits = vader_lexicon("polarity", seed=0)
        >>> len(splits.train), len(splits.val), len(splits.test), splits.classes
        (3486, 1162, 1162, ('negative', 'positive'))
    """
    if task not in TASKS:
        raise ConfigError(f"unknown task '{task}' of the VADER lexicon; use 'polarity' (classes) or 'valence' (regression)")
    if not (0 < val_fraction and 0 < test_fraction and val_fraction + test_fraction < 1):
        raise ConfigError(f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be positive and "
                          "leave a training split (sum < 1)")
    texts, valence, ratings = _lexicon()
    if task == "polarity":
        keep = np.flatnonzero(np.abs(valence) >= 1)
        labels = torch.as_tensor((valence[keep] > 0).astype(np.int64))
        strata, classes = labels.numpy(), POLARITY_CLASSES
    else:
        keep = np.arange(len(texts))
        labels = torch.as_tensor(valence, dtype=torch.float32)
        strata, classes = np.rint(valence).astype(np.int64), tuple(str(r) for r in RATINGS)
    soft = torch.as_tensor(_polarity_votes(ratings[keep]) if task == "polarity" else _rating_histogram(ratings))
    whole = TextSet([texts[i] for i in keep], labels, soft.float())
    train, val, test = _stratified_rows(strata, val_fraction, test_fraction, seed)
    return TextSplits("vader_lexicon", task, whole.subset(train), whole.subset(val), whole.subset(test), classes)


def labelled_split(data: TextSet, fraction: float, seed: int = 0) -> tuple[TextSet, TextSet]:
    """Keep the labels of ``fraction`` of each class (drawn with ``seed``); the rest, unlabelled.

    The unlabelled part keeps its texts and soft labels but no ``labels``: a transfer set that a
    teacher labels for a student, in a semi-supervised comparison where no method sees those labels.

    Raises:
        ConfigError: ``fraction`` outside (0, 1].

    Examples:
        >>> labelled, unlabelled = labelled_split(TextSet(list("abcd"), torch.tensor([0, 0, 1, 1])), 0.5)
        >>> len(labelled), len(unlabelled), unlabelled.labels
        (2, 2, None)
    """
    if not 0 < fraction <= 1:
        raise ConfigError(f"the labelled fraction must be in (0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    labels, keep = data.labels.numpy(), []
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        keep.append(rows[:max(1, round(fraction * len(rows)))])
    kept = np.sort(np.concatenate(keep))
    rest = np.setdiff1d(np.arange(len(data)), kept)
    unlabelled = data.subset(rest)
    return data.subset(kept), TextSet(unlabelled.texts, None, unlabelled.soft_labels)


@functools.lru_cache(maxsize=1)
def _lexicon() -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(texts, mean valence, (N, 10) ratings)`` of ``vader_lexicon.txt``, first occurrence of each text kept."""
    spec = importlib.util.find_spec("vaderSentiment")
    if spec is None or not spec.submodule_search_locations:
        raise _missing("vadersentiment", extra="text")
    path = Path(list(spec.submodule_search_locations)[0]) / "vader_lexicon.txt"
    texts, valence, ratings, seen = [], [], [], set()
    for line in path.read_text(encoding="utf-8").splitlines():
        text, mean, _, votes = line.split("\t")
        if text.lower() in seen:
            continue
        seen.add(text.lower())
        texts.append(text)
        valence.append(float(mean))
        ratings.append(ast.literal_eval(votes))
    return texts, np.asarray(valence), np.asarray(ratings, dtype=np.int64)


def _polarity_votes(ratings: np.ndarray) -> np.ndarray:
    """``(N, 2)``: shares of negative and positive ratings, a 0 rating counted half to each."""
    positive = ((ratings > 0).sum(1) + 0.5 * (ratings == 0).sum(1)) / ratings.shape[1]
    return np.stack([1 - positive, positive], axis=1)


def _rating_histogram(ratings: np.ndarray) -> np.ndarray:
    """``(N, 9)``: the share of the ratings at each value -4..4."""
    return np.stack([(ratings == r).mean(1) for r in RATINGS], axis=1)


def _stratified_rows(strata: np.ndarray, val_fraction: float, test_fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[], [], []]
    for stratum in np.unique(strata):
        rows = rng.permutation(np.flatnonzero(strata == stratum))
        n_test, n_val = round(test_fraction * len(rows)), round(val_fraction * len(rows))
        for part, chosen in zip(parts, (rows[n_test + n_val:], rows[n_test:n_test + n_val], rows[:n_test])):
            part.append(chosen)
    return tuple(np.sort(np.concatenate(p)) for p in parts)  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------- tokenizing


class Tokenizer(Protocol):
    """What :func:`text_loader` needs of a tokenizer (a Hugging Face tokenizer has it)."""

    pad_token_id: int | None

    def __call__(self, texts: list[str], truncation: bool = ..., max_length: int | None = ...) -> Any: ...


class CharNgramTokenizer:
    """Character n-grams of each word, hashed into ``buckets`` ids (0 is padding): fastText's subwords.

    Each text is lower-cased and split on spaces; each word gets boundary marks (``<good>``) and
    yields its n-grams for every ``n`` in ``ngrams`` (a word shorter than ``n`` yields itself).
    An n-gram's id is ``1 + crc32(utf-8 bytes) % (buckets - 1)``: the same in every process.
    Called like a Hugging Face tokenizer, it returns ``{"input_ids": [[...], ...]}``.

    Args:
        buckets: ids, padding included (the student's embedding rows).
        ngrams: the n-gram lengths.

    Examples:
        >>> tokenizer = CharNgramTokenizer(buckets=1000, ngrams=(3,))
        >>> tokenizer(["ok"])["input_ids"]
        [[624, 291]]
    """

    pad_token_id = 0

    def __init__(self, buckets: int = 4096, ngrams: Sequence[int] = (2, 3, 4)):
        if buckets < 2:
            raise ConfigError(f"buckets must be >= 2 (id 0 is padding), got {buckets}")
        if not ngrams or any(n < 1 for n in ngrams):
            raise ConfigError(f"ngrams must be positive lengths, got {list(ngrams)}")
        self.buckets, self.ngrams = buckets, tuple(ngrams)

    def encode(self, text: str) -> list[int]:
        """The hashed n-gram ids of one text."""
        ids = []
        for word in text.lower().split() or [""]:
            marked = f"<{word}>"
            for n in self.ngrams:
                grams = [marked[i:i + n] for i in range(len(marked) - n + 1)] or [marked]
                ids += [1 + zlib.crc32(g.encode("utf-8")) % (self.buckets - 1) for g in grams]
        return ids

    def __call__(self, texts: list[str], truncation: bool = False, max_length: int | None = None) -> dict[str, Any]:
        ids = [self.encode(t) for t in texts]
        return {"input_ids": [row[:max_length] for row in ids] if truncation and max_length else ids}


class TokenizedText(Dataset):
    """A :class:`TextSet` tokenized once: items ``{"input_ids": (L,) tensor, "labels", "soft_labels"}``.

    With ``by_length``, the rows are ordered by token count (``order`` maps them back), so that
    evaluation batches need little padding.
    """

    def __init__(self, data: TextSet, tokenizer: Tokenizer, max_length: int | None = 16, by_length: bool = False):
        ids = tokenizer(list(data.texts), truncation=max_length is not None, max_length=max_length)["input_ids"]
        if any(len(row) == 0 for row in ids):
            raise DataError("a text tokenized to no ids at all; drop empty texts before building the loader")
        order = sorted(range(len(ids)), key=lambda i: len(ids[i])) if by_length else list(range(len(ids)))
        self.order = torch.tensor(order, dtype=torch.long)
        self.ids = [torch.tensor(ids[i], dtype=torch.long) for i in order]
        self.labels = None if data.labels is None else data.labels[self.order]
        self.soft_labels = None if data.soft_labels is None else data.soft_labels[self.order]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = {"input_ids": self.ids[index]}
        for key in ("labels", "soft_labels"):
            values = getattr(self, key)
            if values is not None:
                item[key] = values[index]
        return item


class PadBatch:
    """Collate items of :class:`TokenizedText` into one batch padded to its longest text.

    Returns ``{"input_ids": (B, L), "attention_mask": (B, L), "labels": (B,), "soft_labels": (B, C)}``
    where ``L`` is the longest text of the batch (dynamic padding) and padding has mask 0; labels
    and soft labels only when the items have them.
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        longest = max(len(item["input_ids"]) for item in items)
        ids = torch.full((len(items), longest), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(items), longest), dtype=torch.long)
        for row, item in enumerate(items):
            ids[row, :len(item["input_ids"])] = item["input_ids"]
            mask[row, :len(item["input_ids"])] = 1
        batch = {"input_ids": ids, "attention_mask": mask}
        for key in ("labels", "soft_labels"):
            if key in items[0]:
                batch[key] = torch.stack([item[key] for item in items])
        return batch


def text_loader(data: TextSet, tokenizer: Tokenizer, batch_size: int = 32, shuffle: bool = False, seed: int = 0,
                max_length: int | None = 16, by_length: bool | None = None) -> DataLoader:
    """Batches of tokenized text for the Trainer, padded per batch.

    The texts are tokenized once; each batch is a dict ``input_ids``, ``attention_mask``,
    ``labels`` (and ``soft_labels``; no labels for unlabelled texts) padded to its own longest
    text. Shuffled loaders draw their order from a generator seeded with ``seed`` (so a resumed
    run replays it).

    Args:
        data: the texts and labels.
        tokenizer: a Hugging Face tokenizer or a :class:`CharNgramTokenizer`.
        batch_size: texts per batch.
        shuffle: reshuffle every epoch (training).
        seed: seed of the shuffling.
        max_length: truncate longer texts to this many tokens (``None``: never).
        by_length: order the rows by length so batches need little padding (default: when not
            shuffling); the metrics of an evaluation do not depend on the order.

    Raises:
        ConfigError: a tokenizer without a padding token.

    Examples:
        >>> data = TextSet(["good", "awful"], torch.tensor([1, 0]))
        >>> batch = next(iter(text_loader(data, CharNgramTokenizer(buckets=100), batch_size=2)))
        >>> sorted(batch), batch["input_ids"].shape[0]
        (['attention_mask', 'input_ids', 'labels'], 2)
    """
    if tokenizer.pad_token_id is None:
        raise ConfigError(f"{type(tokenizer).__name__} has no padding token; set tokenizer.pad_token (e.g. to its "
                          "eos_token) so that batches can be padded")
    encoded = TokenizedText(data, tokenizer, max_length, by_length=not shuffle if by_length is None else by_length)
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(encoded, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      collate_fn=PadBatch(tokenizer.pad_token_id))
