"""Text data: the VADER lexicon's seeded stratified splits, character n-gram ids, and dynamically padded batches."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from warmstart.data import CharNgramTokenizer, TextSet, labelled_split, text_loader, vader_lexicon
from warmstart.errors import ConfigError, DataError

pytest.importorskip("vaderSentiment", reason="the VADER lexicon ships in the vadersentiment package (warmstart[text])")


def test_polarity_splits_are_stratified_disjoint_and_seeded():
    splits = vader_lexicon("polarity", seed=0)
    parts = (splits.train, splits.val, splits.test)
    assert [len(p) for p in parts] == [3486, 1162, 1162] and splits.classes == ("negative", "positive")
    assert sum(int(p.labels.sum()) for p in parts) == 2561  # 2,561 positive, 3,249 negative entries
    shares = [float(p.labels.float().mean()) for p in parts]
    assert max(shares) - min(shares) < 0.002  # the same class balance in every split
    texts = [set(p.texts) for p in parts]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    again, other = vader_lexicon("polarity", seed=0), vader_lexicon("polarity", seed=1)
    assert again.test.texts == splits.test.texts and other.test.texts != splits.test.texts


def test_soft_labels_are_the_raters_votes():
    train = vader_lexicon("polarity").train
    assert torch.allclose(train.soft_labels.sum(1), torch.ones(len(train)))
    hate = train.texts.index("hate")  # mean -2.7 from ratings [-4, -3, -4, -4, -2, -2, -2, -2, -1, -3]
    assert train.labels[hate] == 0 and train.soft_labels[hate].tolist() == [1.0, 0.0]
    splits = vader_lexicon("polarity")
    wink = {t: row for part in (splits.train, splits.val, splits.test) for t, row in zip(part.texts, part.soft_labels)}
    # "(-;": ratings [3, 2, 3, 0, 1, -1, 1, 2, 1, 1]: 8 positive, one 0 (half each way), 1 negative
    assert wink["(-;"].tolist() == pytest.approx([0.15, 0.85])
    agree = (train.soft_labels.argmax(1) == train.labels).float().mean()
    assert agree > 0.95  # the majority of raters mostly agrees with the sign of the mean


def test_valence_task_keeps_every_entry_with_its_rating_histogram():
    splits = vader_lexicon("valence", seed=0)
    assert len(splits.train) + len(splits.val) + len(splits.test) == 7494
    assert splits.train.labels.dtype == torch.float32 and splits.num_classes == 1
    assert splits.train.soft_labels.shape[1] == 9 and splits.classes[0] == "-4"
    # the mean of the histogram over -4..4 is the mean valence
    means = splits.train.soft_labels @ torch.arange(-4, 5).float()
    assert torch.allclose(means, splits.train.labels, atol=1e-4)


def test_bad_options_and_the_missing_package(monkeypatch):
    with pytest.raises(ConfigError, match="unknown task 'sentiment'"):
        vader_lexicon("sentiment")
    with pytest.raises(ConfigError, match="leave a training split"):
        vader_lexicon(val_fraction=0.5, test_fraction=0.5)
    from warmstart.data import text

    text._lexicon.cache_clear()
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "vaderSentiment" else find_spec(name, *a))
    with pytest.raises(DataError, match=r"'vadersentiment' package, which is not installed.*warmstart\[text\]"):
        vader_lexicon()
    monkeypatch.undo()
    text._lexicon.cache_clear()


def test_char_ngram_ids_are_stable_and_never_padding():
    tokenizer = CharNgramTokenizer(buckets=1000, ngrams=(2, 3))
    ids = tokenizer(["Good day", ":-)"])["input_ids"]
    assert ids == tokenizer(["good day", ":-)"])["input_ids"]  # lower-cased
    assert len(ids[0]) == (5 + 4) + (4 + 3) and all(0 < i < 1000 for row in ids for i in row)
    assert ids[1][:2] == [tokenizer.encode(":-)")[0], tokenizer.encode(":-)")[1]]
    assert tokenizer(["abcdef"], truncation=True, max_length=3)["input_ids"] == [tokenizer.encode("abcdef")[:3]]
    with pytest.raises(ConfigError, match="buckets must be >= 2"):
        CharNgramTokenizer(buckets=1)


def test_batches_are_padded_to_their_longest_text():
    data = TextSet(["a", "abcdefgh", "abc", "ab"], torch.tensor([0, 1, 0, 1]), torch.tensor([[1.0, 0.0]] * 4))
    tokenizer = CharNgramTokenizer(buckets=100, ngrams=(1,))
    loader = text_loader(data, tokenizer, batch_size=2, by_length=True)
    batches = list(loader)
    assert [b["input_ids"].shape[1] for b in batches] == [4, 10]  # "<a>", "<ab>" | "<abc>", "<abcdefgh>"
    assert batches[0]["attention_mask"].sum(1).tolist() == [3, 4]
    assert (batches[0]["input_ids"][0, 3:] == 0).all() and set(batches[1]) == {"input_ids", "attention_mask", "labels",
                                                                               "soft_labels"}
    assert loader.dataset.order.tolist() == [0, 3, 2, 1]  # rows sorted by length, and where each came from

    shuffled = [b["labels"].tolist() for b in text_loader(data, tokenizer, batch_size=4, shuffle=True, seed=3)]
    assert shuffled == [b["labels"].tolist() for b in text_loader(data, tokenizer, batch_size=4, shuffle=True, seed=3)]
    unlabelled = next(iter(text_loader(TextSet(["x"], None), tokenizer)))
    assert set(unlabelled) == {"input_ids", "attention_mask"}


def test_labelled_split_keeps_a_share_of_each_class_and_hides_the_rest():
    train = vader_lexicon("polarity").train
    labelled, unlabelled = labelled_split(train, 0.25, seed=0)
    assert len(labelled) == 871 and len(unlabelled) == 3486 - 871 and unlabelled.labels is None
    assert abs(float(labelled.labels.float().mean()) - float(train.labels.float().mean())) < 0.002
    assert not set(labelled.texts) & set(unlabelled.texts) and unlabelled.soft_labels.shape == (2615, 2)
    assert labelled_split(train, 0.25, seed=0)[0].texts == labelled.texts != labelled_split(train, 0.25, seed=1)[0].texts
    assert len(labelled_split(train, 1.0)[1]) == 0
    with pytest.raises(ConfigError, match=r"labelled fraction must be in \(0, 1\]"):
        labelled_split(train, 0.0)
