"""Misuses of LoRA, fine-tuning and heads (issue 23): each is honoured or refused with a clear error, never silent."""

from __future__ import annotations

import copy
import warnings
from collections import OrderedDict

import pytest
import torch
from conftest import make_dataset, make_mlp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import warmstart as ws
from warmstart._resume import ResumeChangeWarning
from warmstart.errors import CheckpointError, ConfigError, DataError
from warmstart.finetune import (
    FinetuneTrainer,
    add_lora,
    check_lora_options,
    find_head,
    fine_tune,
    lora_info,
    merge_lora,
    swap_head,
)
from warmstart.pretrain import save_pretrained

peft = pytest.importorskip("peft", reason="LoRA trains through peft (pip install 'warmstart[text]')")


def tiny_bert(max_positions: int = 16) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=max_positions, num_labels=3)
    return transformers.BertForSequenceClassification(config)


def text_batch(labels: torch.Tensor, length: int = 6) -> dict[str, torch.Tensor]:
    ids = torch.randint(1, 40, (len(labels), length), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


# ---------------------------------------------------------------------------------------------- LoRA resume


def _lora_fit(out_dir, lora: dict, epochs: int, resume: str | None = None) -> list[warnings.WarningMessage]:
    torch.manual_seed(0)
    trainer = FinetuneTrainer(make_mlp(), {"name": "adamw", "lr": 1e-2}, method="lora", lora=lora, max_epochs=epochs,
                              progress=False, seed=0, out_dir=str(out_dir))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(DataLoader(make_dataset(32), batch_size=16), resume=resume)
    return caught


def test_resuming_lora_with_another_alpha_is_refused_naming_both(tmp_path):
    _lora_fit(tmp_path, {"r": 2, "alpha": 4, "dropout": 0.1}, epochs=1)
    before = (tmp_path / "last.pt").read_bytes()
    with pytest.raises(CheckpointError, match=r"alpha=4\.0 .*this trainer has alpha=8\.0.*Resume with lora=\{'alpha': 4\.0\}"):
        _lora_fit(tmp_path, {"r": 2, "alpha": 8, "dropout": 0.1}, epochs=2, resume="last")
    assert (tmp_path / "last.pt").read_bytes() == before  # nothing trained on


def test_resuming_lora_with_another_dropout_applies_it_and_says_so(tmp_path):
    _lora_fit(tmp_path, {"r": 2, "alpha": 4, "dropout": 0.1}, epochs=1)
    caught = _lora_fit(tmp_path, {"r": 2, "alpha": 4, "dropout": 0.3}, epochs=2, resume="last")
    changes = [str(w.message) for w in caught if issubclass(w.category, ResumeChangeWarning)]
    assert len(changes) == 1 and "method.dropout: 0.1 -> 0.3" in changes[0] and "alpha" not in changes[0]
    assert ws.load_checkpoint(tmp_path / "last.pt")["config"]["method"]["dropout"] == 0.3


# ---------------------------------------------------------------------------------------------- adapters already there


def test_fit_after_merge_lora_is_refused_instead_of_training_the_head_alone():
    model = make_mlp()
    trainer = FinetuneTrainer(model, {"name": "adamw", "lr": 1e-2}, method="lora", lora={"r": 2}, max_epochs=1,
                              progress=False, seed=0)
    merge_lora(model)
    with pytest.raises(ConfigError, match=r"were merged into its weights \(merge_lora\).*would train the head alone"):
        trainer.fit(DataLoader(make_dataset(32), batch_size=16))
    fresh = FinetuneTrainer(model, {"name": "adamw", "lr": 1e-2}, method="lora", lora={"r": 2}, max_epochs=1,
                            progress=False, seed=0)  # the way round: new adapters on the merged model
    assert fresh.lora is lora_info(model) and fresh.lora is not trainer.lora


@pytest.mark.parametrize("options", [{"method": "lora", "lora": {"r": 2}}, {"strategy": "lora", "lora": {"r": 2}},
                                     {"method": {"name": "lora", "r": 2}}, {"method": "lora", "lora": {"alpha": 4}},
                                     {"method": "lora", "lora": {"targets": ["3"]}}])
def test_lora_options_that_differ_from_the_adapters_the_model_has_are_refused(options):
    model = make_mlp()
    add_lora(model, r=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # strategy= is the old spelling of method=
        with pytest.raises(ConfigError, match=r"already has LoRA adapters \(r=8.*but this trainer asks for .*merge_lora"):
            FinetuneTrainer(model, {"name": "adamw", "lr": 1e-2}, progress=False, **options)


def test_the_adapters_a_model_has_train_when_no_other_options_are_asked_for():
    model = make_mlp()
    info = add_lora(model, r=8)
    for options in ({}, {"lora": {"r": 8, "targets": ["0"]}}):
        assert FinetuneTrainer(model, {"name": "adamw", "lr": 1e-2}, method="lora", progress=False, **options).lora is info


# ---------------------------------------------------------------------------------------------- bad options


@pytest.mark.parametrize("targets", [[], "", [""], ()])
def test_empty_lora_targets_are_a_clear_error(targets):
    with pytest.raises(ConfigError, match="LoRA targets must be 'auto' or a non-empty list of module names"):
        add_lora(make_mlp(), targets=targets)
    with pytest.raises(ConfigError, match="LoRA targets must be"):
        check_lora_options(8, 16, 0.05, targets)


# ---------------------------------------------------------------------------------------------- heads


def _body_and_fc() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(body=nn.Sequential(nn.Linear(10, 16), nn.ReLU()), fc=nn.Linear(16, 3)))


def test_swap_head_refuses_a_module_that_is_not_the_output_layer():
    model = _body_and_fc()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match=r"head='body' names a Sequential \(its last Linear/1x1 Conv2d is 'body.0'\) "
                                          r"that is not the output layer.*pass head='fc'"):
        swap_head(model, 5, head="body")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # left as it was
    assert model(torch.randn(2, 10)).shape == (2, 3)
    assert str(swap_head(model, 5, head="fc")) == "replaced fc: Linear(16 -> 3) with Linear(16 -> 5)"


def test_an_explicit_head_is_taken_where_the_trace_cannot_tell_the_output_layer():
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3), nn.LayerNorm(3))  # a norm after the head
    assert find_head(model, "2").name == "2"


def test_a_single_linear_layer_has_no_head_to_find_and_says_so(tmp_path):
    with pytest.raises(ConfigError, match=r"itself one output layer \(Linear\(8 -> 3\)\), with no backbone.*save_weights"):
        save_pretrained(nn.Linear(8, 3), tmp_path / "linear.safetensors")
    assert not (tmp_path / "linear.safetensors").exists()


# ---------------------------------------------------------------------------------------------- fine_tune and text


def test_fine_tune_on_too_few_samples_to_hold_out_a_validation_split_says_so():
    data = TensorDataset(torch.randn(3, 10), torch.tensor([0, 1, 2]))  # one per class: none can be held out
    with pytest.raises(DataError, match=r"cross-validates over 5 folds, and 3 labelled samples are too few to choose "
                                        r"on.*pass a val_loader.*select=False"):
        fine_tune(make_mlp(), DataLoader(data, batch_size=2), num_classes=3, epochs=1, progress=False)


@pytest.mark.parametrize("labels, problem, fix", [
    (torch.tensor([0.0, 1.0]), r"dtype torch.float32", r"labels.long\(\)"),
    (torch.tensor([[0], [1]]), r"shape \(2, 1\)", r"labels.squeeze\(-1\)"),
    (torch.tensor([[0.0], [1.0]]), r"shape \(2, 1\)", r"labels.squeeze\(-1\).long\(\)"),
])
def test_float_or_column_labels_in_text_batches_are_a_clear_error(labels, problem, fix):
    trainer = FinetuneTrainer(tiny_bert(), {"name": "adamw", "lr": 1e-3}, method="full", max_epochs=1, progress=False)
    with pytest.raises(DataError, match=rf"the labels have {problem}, but the model's outputs are \(2, 3\) .*pass {fix}"):
        trainer.fit([text_batch(labels)])


def test_texts_longer_than_the_model_reads_are_a_clear_error():
    trainer = FinetuneTrainer(tiny_bert(max_positions=16), {"name": "adamw", "lr": 1e-3}, method="full", max_epochs=1,
                              progress=False)
    with pytest.raises(DataError, match=r"texts of 20 tokens, but BertForSequenceClassification reads at most 16 .*"
                                        r"max_length=16"):
        trainer.fit([text_batch(torch.tensor([0, 1]), length=20)])
    with pytest.raises(DataError, match="texts of 20 tokens"):
        trainer.evaluate([text_batch(torch.tensor([0, 1]), length=20)])
    assert trainer.fit([text_batch(torch.tensor([0, 1]), length=16)])[-1]["train_loss"] > 0  # up to the limit trains
