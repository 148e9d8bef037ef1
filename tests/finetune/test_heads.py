"""swap_head finds and replaces the output layer of torchvision, timm, Hugging Face and plain models, and nothing else."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torchvision.models as tvm
from torch import nn
from torchvision.models.convnext import CNBlockConfig

from warmstart.errors import ConfigError
from warmstart.finetune import find_head, swap_head

# builder, input size, expected head path, auxiliary heads
TORCHVISION = {
    "resnet18": (lambda: tvm.resnet18(), 64, "fc", []),
    "alexnet": (lambda: tvm.alexnet(), 64, "classifier.6", []),
    "mobilenet_v3_small": (lambda: tvm.mobilenet_v3_small(), 64, "classifier.3", []),
    "efficientnet_b0": (lambda: tvm.efficientnet_b0(), 64, "classifier.1", []),
    "densenet121": (lambda: tvm.densenet121(), 64, "classifier", []),
    "squeezenet1_0": (lambda: tvm.squeezenet1_0(), 64, "classifier.1", []),
    "vit": (lambda: tvm.VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16,
                                          mlp_dim=32), 32, "heads.head", []),
    "swin": (lambda: tvm.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[1, 2],
                                         window_size=[2, 2]), 32, "head", []),
    "convnext": (lambda: tvm.ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)]), 32, "classifier.2", []),
    "regnet_y_400mf": (lambda: tvm.regnet_y_400mf(), 64, "fc", []),
    "shufflenet_v2_x0_5": (lambda: tvm.shufflenet_v2_x0_5(), 64, "fc", []),
    "mnasnet0_5": (lambda: tvm.mnasnet0_5(), 64, "classifier.1", []),
    "googlenet": (lambda: tvm.googlenet(aux_logits=True, init_weights=False), 64, "fc", ["aux1.fc2", "aux2.fc2"]),
    "inception_v3": (lambda: tvm.inception_v3(aux_logits=True, init_weights=False), 80, "fc", ["AuxLogits.fc"]),
}


def _assert_only_head_changed(model: nn.Module, before: dict[str, torch.Tensor], heads: list[str]) -> None:
    """Every head's weight changed; nothing outside the heads did (a new head's fresh BatchNorm may equal the old)."""
    after = model.state_dict()
    changed = {k for k in after if k not in before or not torch.equal(after[k], before[k])}
    under_heads = {k for k in after if any(k.startswith(h + ".") for h in heads)}
    assert changed <= under_heads
    for h in heads:
        assert any(k.startswith(h + ".") and k.endswith("weight") for k in changed), h
    assert set(before) == set(after)


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_torchvision_heads_are_found_and_swapped(name):
    build, size, path, aux = TORCHVISION[name]
    torch.manual_seed(0)
    model = build().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    info = swap_head(model, num_classes=7)
    assert (info.name, info.extra) == (path, aux)
    assert info.old.weight.shape[0] == 1000 and info.new.weight.shape[0] == 7
    _assert_only_head_changed(model, before, [path, *aux])
    new = model.get_submodule(path)
    assert abs(new.weight.std().item() - 0.01) < 0.003 and not new.bias.any()  # explicit N(0, 0.01) init
    with torch.no_grad():
        assert model(torch.randn(2, 3, size, size)).shape == (2, 7)


@pytest.mark.slow
def test_vgg_head_is_classifier_last():  # 132M parameters: slow to build; alexnet covers the same path
    model = tvm.vgg11()
    assert swap_head(model, 3).name == "classifier.6"


@pytest.mark.parametrize(("name", "heads"), [("resnet18", ["fc"]),
                                             ("deit_tiny_distilled_patch16_224", ["head", "head_dist"]),
                                             ("levit_128s", ["head", "head_dist"])])
def test_timm_models_reset_every_head(name, heads):
    timm = pytest.importorskip("timm")
    model = timm.create_model(name, pretrained=False).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    info = swap_head(model, num_classes=5)
    found = [info.name, *info.extra]
    assert len(found) == len(heads) and all(f == h or f.startswith(h + ".") for f, h in zip(found, heads))
    assert [model.get_submodule(f).out_features for f in found] == [5] * len(heads)
    _assert_only_head_changed(model, before, heads)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 5)


@pytest.mark.parametrize("family", ["bert", "roberta", "gpt2"])
def test_hugging_face_sequence_classifiers(family):
    transformers = pytest.importorskip("transformers")
    if family == "bert":
        config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=32, num_labels=3)
        model, path = transformers.BertForSequenceClassification(config), "classifier"
    elif family == "roberta":
        config = transformers.RobertaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                            intermediate_size=32, num_labels=3)
        model, path = transformers.RobertaForSequenceClassification(config), "classifier.out_proj"
    else:
        config = transformers.GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2, num_labels=3, pad_token_id=0)
        model, path = transformers.GPT2ForSequenceClassification(config), "score"
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert swap_head(model, num_classes=6).name == path
    assert model.config.num_labels == 6 and model.num_labels == 6
    _assert_only_head_changed(model, before, [path])
    with torch.no_grad():
        assert model(input_ids=torch.randint(1, 50, (2, 5))).logits.shape == (2, 6)


def test_sequential_custom_path_and_bad_input():
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2), nn.Softmax(dim=1))
    assert swap_head(model, 5).name == "3"

    class TwoTowers(nn.Module):  # no forward: nothing to trace, so the head cannot be found from the computation
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.classifier = nn.Linear(4, 2)

    with pytest.raises(ConfigError, match="cannot tell which layer of TwoTowers is the head.*Candidates: fc, classifier"):
        swap_head(TwoTowers(), 3)
    assert swap_head(TwoTowers(), 3, head="classifier").new.out_features == 3
    with pytest.raises(ConfigError, match="no module 'clasifier' \\(did you mean 'classifier'\\?\\)"):
        swap_head(TwoTowers(), 3, head="clasifier")
    for bad in (0, -2, 2.5, True):
        with pytest.raises(ConfigError, match="num_classes must be an integer >= 1"):
            swap_head(model, bad)
    custom = nn.Sequential(OrderedDict(body=nn.Linear(3, 3), out=nn.Linear(3, 2)))
    assert find_head(custom).name == "out" and find_head(custom).in_features == 3
    with pytest.raises(ConfigError, match="unknown head init 'uniform'"):
        swap_head(nn.Sequential(nn.Linear(2, 2)), 3, init="uniform")


class _OutFirst(nn.Module):
    """The head registered before the body: registration order says 'body', the computation says 'out'."""

    def __init__(self):
        super().__init__()
        self.out = nn.Linear(8, 3)
        self.body = nn.Linear(4, 8)

    def forward(self, x):
        return self.out(torch.relu(self.body(x)))


class _TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.out_a = nn.Linear(8, 3)
        self.out_b = nn.Linear(8, 2)

    def forward(self, x):
        h = torch.relu(self.body(x))
        return {"a": self.out_a(h), "b": self.out_b(h)}


class _HeadInsideSequential(nn.Module):
    """The head is the last layer of ``net``; an unused projection is registered after it."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        self.projection = nn.Linear(3, 16)

    def forward(self, x):
        logits = self.net(x)
        return logits.view(logits.size(0), -1)  # a reshape (reading the size) after the head


class _Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(8, 3)
        self.body = nn.Linear(4, 8)

    def forward(self, x):
        if x.sum() > 1e9:  # data-dependent control flow: torch.fx cannot trace it
            x = x * 0
        return self.head(torch.relu(self.body(x)))


def test_the_head_is_found_from_the_computation_not_the_registration_order():
    model = _OutFirst()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    info = swap_head(model, 5)
    assert (info.name, str(info)) == ("out", "replaced out: Linear(8 -> 3) with Linear(8 -> 5)")
    _assert_only_head_changed(model, before, ["out"])
    assert model(torch.randn(2, 4)).shape == (2, 5)
    assert find_head(_HeadInsideSequential()).name == "net.2"


def test_two_heads_are_an_error_that_lists_them():
    with pytest.raises(ConfigError, match="several modules could be the head of _TwoHeads.*out_a, out_b; pass head="):
        swap_head(_TwoHeads(), 5)
    assert swap_head(_TwoHeads(), 5, head="out_b").name == "out_b"


def test_an_untraceable_model_needs_an_example_input_or_a_head_path():
    with pytest.raises(ConfigError, match="torch.fx cannot trace.*example_input"):
        find_head(_Untraceable())
    assert find_head(_Untraceable(), example_input=torch.randn(2, 4)).name == "head"


def test_the_default_init_keeps_the_layers_own_reset_parameters_for_fair_controls():
    """Issue 24: a from-scratch control given swap_head's N(0, 0.01^2) head trains slower than a model built fresh."""
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    torch.manual_seed(3)
    swap_head(model, 5, init="default")
    torch.manual_seed(3)
    fresh = nn.Linear(32, 5)  # nn.Linear's own draw: U(-1/sqrt(32), 1/sqrt(32)), bias too (drawn twice, as swap_head does)
    fresh.reset_parameters()
    assert torch.equal(model[2].weight, fresh.weight) and torch.equal(model[2].bias, fresh.bias)
    swap_head(model, 5)  # pretrained features keep the small normal init
    assert model[2].weight.abs().max() < 0.06 and not model[2].bias.any()


def test_fine_tune_passes_the_head_init_on():
    from warmstart.finetune import fine_tune

    data = [(torch.randn(8, 6), torch.randint(0, 3, (8,)))] * 2
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))
    torch.manual_seed(0)
    fine_tune(model, data, num_classes=3, head_init="default", select=False, epochs=1, freeze_epochs=0, lr=1e-9,
              progress=False)
    bound = 1 / 16 ** 0.5
    assert model[2].weight.abs().max() <= bound and model[2].weight.std() > 0.1 and model[2].bias.any()
