"""Fine-tune a Hugging Face transformer for sequence classification, with its head swapped for new labels.

:func:`warmstart.finetune.swap_head` finds a Hugging Face model's ``classifier`` (or ``score``) layer,
replaces it with one for the new number of labels and updates ``config.num_labels``. The
:class:`warmstart.Trainer` feeds ``model(inputs)`` by default; a Hugging Face model wants keyword
arguments and returns an output object, so this example overrides ``compute_loss`` (the extension
point the library's own trainers use). Batches are ``(encoding dict, labels)`` pairs, so the
default ``validation_step`` still finds the labels and reports accuracy.

Nothing is downloaded: the "pretrained" model is a tiny BERT built from a config with 2 labels,
standing in for ``AutoModelForSequenceClassification.from_pretrained(name)``, and the data is a toy
3-class sentiment task tokenised by a word-level vocabulary. Skipped (exit 0) without ``transformers``.

Run::

    python examples/05_hf_sequence_classification.py            # under a minute on 2 CPU cores
    python examples/05_hf_sequence_classification.py --dry-run  # a few steps, seconds
"""

from __future__ import annotations

import argparse
import importlib.util
import random
from typing import Any

import torch
from torch.utils.data import DataLoader

import warmstart as ws

LABELS = ("negative", "neutral", "positive")
SENTIMENT = {0: ["awful", "boring", "dull", "terrible", "bad"], 1: ["okay", "average", "fine", "plain", "long"],
             2: ["great", "brilliant", "lovely", "superb", "good"]}
FILLER = ["the", "film", "movie", "plot", "was", "really", "quite", "acting", "ending", "and", "very", "overall", "a"]
VOCAB = ["[PAD]", "[CLS]", "[SEP]", *FILLER, *(word for words in SENTIMENT.values() for word in words)]


def toy_sentiment(n: int, max_len: int = 16, seed: int = 0) -> list[tuple[dict[str, torch.Tensor], int]]:
    """``n`` tokenised sentences of filler words around one sentiment word, and the word's class."""
    rng, index = random.Random(seed), {word: i for i, word in enumerate(VOCAB)}
    samples = []
    for _ in range(n):
        label = rng.randrange(len(LABELS))
        words = rng.choices(FILLER, k=rng.randint(3, max_len - 3))
        words.insert(rng.randrange(len(words) + 1), rng.choice(SENTIMENT[label]))
        ids = [index["[CLS]"], *(index[w] for w in words), index["[SEP]"]]
        mask = [1] * len(ids) + [0] * (max_len - len(ids))
        ids += [index["[PAD]"]] * (max_len - len(ids))
        samples.append(({"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}, label))
    return samples


class HFTrainer(ws.Trainer):
    """A Trainer for Hugging Face models: dict inputs as keyword arguments, loss on ``output.logits``."""

    def compute_loss(self, batch: Any) -> dict[str, torch.Tensor]:
        inputs, target = batch  # (encoding dict, labels): the default validation_step finds the labels too
        logits = self.model(**inputs).logits
        return {"loss": self.loss_fn(logits, target), "output": logits}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--train-size", type=int, default=1000, help="toy training sentences")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dry-run", action="store_true", help="a few steps on a handful of sentences")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if importlib.util.find_spec("transformers") is None:
        print("skipped: this example needs Hugging Face transformers (pip install transformers)")
        return 0
    from transformers import BertConfig, BertForSequenceClassification

    if args.dry_run:
        args.epochs, args.train_size = 1, 16
    ws.seed_everything(args.seed)
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=32, num_labels=2)
    model = BertForSequenceClassification(config)  # stands in for a pretrained binary-sentiment checkpoint
    print(ws.finetune.swap_head(model, num_classes=len(LABELS)))
    print(f"config.num_labels is now {model.config.num_labels}")

    train = DataLoader(toy_sentiment(args.train_size, seed=args.seed), batch_size=32, shuffle=True)
    test = DataLoader(toy_sentiment(max(args.train_size // 4, 8), seed=args.seed + 1), batch_size=256)
    trainer = HFTrainer(model, {"name": "adamw", "lr": args.lr, "weight_decay": 0.01},
                        scheduler={"name": "cosine", "warmup_epochs": 0.5}, max_epochs=args.epochs, seed=args.seed)
    trainer.fit(train, test)
    print(f"test accuracy {trainer.evaluate(test)['accuracy']:.1%} over {len(LABELS)} labels")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
