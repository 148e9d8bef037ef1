"""LoRA through peft: targets per model family, only adapters and head train, adapter files, merging, resume, DDP."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import CrashAtStep, make_dataset, make_mlp
from torch import nn
from torch.utils.data import DataLoader

import warmstart as ws
from warmstart.errors import CheckpointError, ConfigError
from warmstart.finetune import (FinetuneTrainer, add_lora, base_identity, fine_tune, load_adapter, load_pretrained,
                                lora_info, merge_lora, resolve_targets)

pytest.importorskip("peft", reason="LoRA trains through peft (pip install 'warmstart[text]')")

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def tiny_bert(num_labels: int = 3, seed: int = 0) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16, num_labels=num_labels)
    return transformers.BertForSequenceClassification(config)


def text_batches(n: int = 4, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 40, (n, 8, 6), generator=g)
    return [{"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x[:, 0] % 3} for x in ids]


def test_auto_targets_per_model_family():
    from torchvision.models import resnet18

    assert resolve_targets(make_mlp()) == ["0"]  # every Linear but the head
    resnet = resolve_targets(resnet18(num_classes=5))
    assert "conv1" in resnet and "layer4.1.conv2" in resnet and "layer2.0.downsample.0" in resnet and "fc" not in resnet
    bert = resolve_targets(tiny_bert())  # the repeated blocks' attention and MLP layers: not pooler, not head
    assert len(bert) == 12 and all(name.startswith("bert.encoder.layer.") for name in bert)
    assert {name.split(".", 4)[-1] for name in bert} == {"attention.self.query", "attention.self.key",
                                                         "attention.self.value", "attention.output.dense",
                                                         "intermediate.dense", "output.dense"}


def test_targets_by_suffix_and_named_errors():
    model = tiny_bert()
    assert resolve_targets(model, ["query", "value"]) == [f"bert.encoder.layer.{i}.attention.self.{m}"
                                                          for i in (0, 1) for m in ("query", "value")]
    with pytest.raises(ConfigError, match=r"'qurey' matches no Linear or Conv layer.*candidates.*query"):
        resolve_targets(model, ["qurey"])
    with pytest.raises(ConfigError, match="is the head, which always trains in full"):
        resolve_targets(model, ["classifier"])


def test_only_adapters_and_head_train_and_the_base_is_untouched():
    model = make_mlp()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = FinetuneTrainer(model, {"name": "adamw", "lr": 1e-2}, method="lora", lora={"r": 2, "alpha": 4},
                              max_epochs=2, progress=False, seed=0)
    assert [g["name"] for g in trainer.optimizer.param_groups] == ["head", "head", "lora"]
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == ["0.lora_A.default.weight", "0.lora_B.default.weight", "3.bias", "3.weight"]
    trainer.fit(DataLoader(make_dataset(), batch_size=16, shuffle=True))
    state = model.state_dict()
    assert torch.equal(state["0.base_layer.weight"], base["0.weight"])
    assert torch.equal(state["0.base_layer.bias"], base["0.bias"])
    assert not torch.equal(state["3.weight"], base["3.weight"]) and state["0.lora_B.default.weight"].abs().sum() > 0


@pytest.mark.parametrize("family", ["torchvision", "timm", "huggingface"])
def test_lora_fine_tunes_every_family(family):
    if family == "torchvision":
        from torchvision.models import resnet18

        model, batches = resnet18(num_classes=3), [(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]))] * 2
    elif family == "timm":
        timm = pytest.importorskip("timm")
        model = timm.create_model("vit_tiny_patch16_224", num_classes=3, img_size=32, pretrained=False)
        batches = [(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]))] * 2
    else:
        model, batches = tiny_bert(), text_batches(2)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = FinetuneTrainer(model, {"name": "adamw", "lr": 1e-2}, method="lora", lora={"r": 4}, max_epochs=1,
                              progress=False, seed=0)
    trainer.fit(batches)
    info = lora_info(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in model.state_dict() if "lora_" in n or n in info.head}
    adapted = info.targets[0]
    assert torch.equal(model.get_submodule(adapted).base_layer.weight, base[f"{adapted}.weight"])
    assert model.get_submodule(adapted).lora_B["default"].weight.abs().sum() > 0


def test_adapter_files_hold_adapters_and_head_and_refuse_another_base(tmp_path):
    torch.manual_seed(0)
    pretrained = make_mlp()
    model = copy.deepcopy(pretrained)
    FinetuneTrainer(model, {"name": "adamw", "lr": 1e-2}, method="lora", lora={"r": 2}, max_epochs=1, progress=False,
                    seed=0, out_dir=str(tmp_path / "run")).fit(DataLoader(make_dataset(), batch_size=16))
    weights, metadata = ws.load_weights(tmp_path / "run" / "last.safetensors")
    assert sorted(weights) == ["0.lora_A.default.weight", "0.lora_B.default.weight", "3.bias", "3.weight"]
    assert metadata["lora"]["base"] == base_identity(pretrained, ["3.weight", "3.bias"]) == lora_info(model).base
    assert metadata["lora"]["targets"] == ["0"] and metadata["head"] == "3"

    fresh = copy.deepcopy(pretrained)
    load_adapter(fresh, tmp_path / "run" / "last.safetensors")
    x = torch.randn(5, 10)
    model.eval(), fresh.eval()
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="adapters only work on the weights they were trained with"):
        load_adapter(make_mlp(), tmp_path / "run" / "last.safetensors")
    with pytest.raises(CheckpointError, match="is a LoRA adapter.*load_adapter"):
        load_pretrained(copy.deepcopy(pretrained), tmp_path / "run" / "last.safetensors")


def test_merged_model_computes_what_the_adapted_one_did():
    model = tiny_bert()
    trainer = FinetuneTrainer(model, {"name": "adamw", "lr": 5e-2}, method="lora", lora={"r": 4, "dropout": 0.1},
                              max_epochs=2, progress=False, seed=0)
    trainer.fit(text_batches())
    batch = {k: v for k, v in text_batches(1, seed=1)[0].items() if k != "labels"}
    model.eval()
    adapted = model(**batch).logits
    merged = merge_lora(model)
    assert merged is model and lora_info(model) is None and not any("lora" in n for n, _ in model.named_parameters())
    assert type(model.bert.encoder.layer[0].attention.self.query) is nn.Linear
    torch.testing.assert_close(model(**batch).logits, adapted, rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="has no LoRA adapters to merge"):
        merge_lora(model)


def _lora_run(out_dir: Path, callbacks=(), resume: str | None = None) -> nn.Module:
    torch.manual_seed(0)
    model = make_mlp(dropout=0.1)
    trainer = FinetuneTrainer(model, {"name": "adamw", "lr": 1e-2}, method="lora", lora={"r": 2, "dropout": 0.2},
                              proximal=2.0, scheduler={"name": "cosine"}, max_epochs=3, progress=False, seed=0,
                              save_every=2, out_dir=str(out_dir), callbacks=callbacks)
    trainer.fit(DataLoader(make_dataset(), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(1)),
                resume=resume)
    return model


def test_resume_of_a_lora_run_after_a_crash_mid_epoch_is_bit_exact(tmp_path):
    straight = _lora_run(tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        _lora_run(tmp_path / "crashed", callbacks=[CrashAtStep(7)])  # epoch 2 of 3; last checkpoint at step 6
    saved = ws.load_checkpoint(tmp_path / "crashed" / "last.pt")["model"]
    assert saved and all(".lora_" in name or name.startswith("3.") for name in saved)  # no frozen base weights
    resumed = _lora_run(tmp_path / "crashed", resume="last")
    for name, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name


def test_a_lora_checkpoint_refuses_to_resume_on_another_base(tmp_path):
    _lora_run(tmp_path)
    torch.manual_seed(1)  # another base model: other weights under the same names
    trainer = FinetuneTrainer(make_mlp(dropout=0.1), {"name": "adamw", "lr": 1e-2}, method="lora",
                              lora={"r": 2, "dropout": 0.2}, proximal=2.0, scheduler={"name": "cosine"},
                              max_epochs=4, progress=False, seed=0, out_dir=str(tmp_path))
    with pytest.raises(CheckpointError, match="the LoRA run this checkpoint continues was trained on .* sha256"):
        trainer.fit(DataLoader(make_dataset(), batch_size=16), resume="last")


def test_lora_with_the_proximal_term_anchors_the_adapters_only():
    model = make_mlp()
    trainer = FinetuneTrainer(model, {"name": "adamw", "lr": 1e-2}, method="lora", lora={"r": 2}, proximal=0.01,
                              max_epochs=1, progress=False, seed=0)
    trainer.fit(DataLoader(make_dataset(), batch_size=16))
    assert sorted(trainer.proximal.anchor.tensors) == ["0.lora_A.default.weight", "0.lora_B.default.weight"]
    assert all(g["weight_decay"] == 0 for g in trainer.optimizer.param_groups if g["name"] == "lora")


def test_fine_tune_with_lora_trains_adapters_only():
    model = make_mlp()
    first = model[0].weight.detach().clone()
    result = fine_tune(model, DataLoader(make_dataset(), batch_size=16), num_classes=4, epochs=1, lora={"r": 2},
                       progress=False, seed=0)
    assert result.choice == "lora" and lora_info(model).targets == ["0"] and result.scores == {}
    assert torch.equal(model[0].base_layer.weight, first) and model[3].out_features == 4


def test_bad_lora_settings(monkeypatch):
    with pytest.raises(ConfigError, match="gives LoRA options, but the method is 'full'"):
        FinetuneTrainer(make_mlp(), method="full", lora={"r": 4})
    with pytest.raises(ConfigError, match="LoRA rank r must be an integer >= 1"):
        add_lora(make_mlp(), r=0)
    model = make_mlp()
    add_lora(model, r=2)
    with pytest.raises(ConfigError, match="already has LoRA adapters"):
        add_lora(model, r=2)
    monkeypatch.setitem(sys.modules, "peft", None)  # as if peft were not installed
    with pytest.raises(ConfigError, match=r"'peft' package, which is not installed: pip install 'warmstart\[text\]'"):
        FinetuneTrainer(make_mlp(), method="lora")


def test_torchrun_two_processes_train_lora_like_one(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "GLOO_SOCKET_IFNAME": "lo"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(SCRIPTS / "ddp_lora.py"), str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    sys.path.insert(0, str(SCRIPTS))
    from ddp_lora import train

    one = train(tmp_path / "one", batch_size=8)  # one process, the same global batch of 2 x 4
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for name, value in one.items():
        torch.testing.assert_close(ranks[0][name], value, rtol=0, atol=1e-6, msg=name)
        assert torch.equal(ranks[0][name], ranks[1][name]), name
    weights, metadata = ws.load_weights(tmp_path / "ddp" / "last.safetensors")  # rank 0 wrote the adapter
    assert "lora" in metadata and all("lora_" in k or k.startswith("4.") for k in weights)


def test_an_adapter_with_other_settings_than_the_models_adapters_is_refused(tmp_path):
    """Issue 37: an adapter trained at alpha 32 loaded at the model's 16 without a word (outputs 20 apart)."""
    from warmstart.finetune import save_adapter

    torch.manual_seed(0)
    pretrained = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    trained = copy.deepcopy(pretrained)
    add_lora(trained, r=2, alpha=32, targets=["0"])
    path = save_adapter(trained, tmp_path / "adapter.safetensors")
    other = copy.deepcopy(pretrained)
    add_lora(other, r=2, alpha=16, targets=["0"])
    with pytest.raises(CheckpointError, match=r"other settings .*alpha 16.0 \(the file's: 32.0\).*without adapters"):
        load_adapter(other, path)
    elsewhere = copy.deepcopy(pretrained)
    add_lora(elsewhere, r=2, alpha=32, targets=["2"])
    with pytest.raises(CheckpointError, match=r"targets \['2'\] \(the file's: \['0'\]\)"):
        load_adapter(elsewhere, path)
    fresh = copy.deepcopy(pretrained)
    assert load_adapter(fresh, path).alpha == 32.0  # without adapters: it gets the file's settings


def test_a_merged_model_trains_every_layer_it_trained_before_the_adapters():
    """Issue 37: merge_lora left the merged base frozen, so a plain Trainer trained only the head, silently."""
    model = make_mlp()
    model[0].bias.requires_grad_(False)  # frozen before the adapters: stays frozen
    add_lora(model, r=2, targets=["0"])
    merge_lora(model)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"0.weight", "3.weight", "3.bias"}


@pytest.mark.parametrize("action", ["prune", "sparsify", "quantize"])
def test_compressing_a_model_with_unmerged_adapters_is_refused(action):
    """Issue 37: sparsify reported 50% on merged weights 3-41% zero; prune narrowed the adapters; int8 quantized apart."""
    pytest.importorskip("torchao")
    from warmstart import compress

    model = make_mlp()
    add_lora(model, r=2, targets=["0"])
    call = {"prune": lambda: compress.prune(model, torch.randn(2, 10), 0.5),
            "sparsify": lambda: compress.sparsify(model, 0.5),
            "quantize": lambda: compress.quantize(model, "int8-dynamic", torch.randn(2, 10))}[action]
    with pytest.raises(ConfigError, match=rf"cannot {action} a model with unmerged LoRA adapters \(on 0\).*merge_lora"):
        call()


def test_a_conv_class_without_padding_mode_in_its_constructor_takes_adapters():
    class SameConv(torch.nn.Conv2d):  # as timm's Conv2dSame: no padding_mode argument (peft 0.22 passes one)
        def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                     bias=True):
            super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)

    model = torch.nn.Sequential(SameConv(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 6 * 6, 2))
    x = torch.randn(2, 3, 6, 6)
    before = model(x)
    info = ws.finetune.add_lora(model, r=2, targets=["0"])
    assert info.targets == ["0"] and isinstance(model[0].base_layer, SameConv)
    torch.testing.assert_close(model(x), before)  # B = 0: the adapted model starts where it was
    assert [n for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
