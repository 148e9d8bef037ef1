"""build_model and check_model_args: what cannot be built is refused with the fix, before any data or training."""

import pytest
import torch

from warmstart.errors import ConfigError
from warmstart.models import build_model, build_model_for, check_model_args


@pytest.mark.parametrize(("name", "args", "message"), [
    ("resnet18_smal", {}, r"model.name: unknown model 'resnet18_smal' \(did you mean 'resnet18_small'\?\)"),
    ("small_cnn", {"widht": 8}, r"model.args: model 'small_cnn' takes no argument 'widht' \(did you mean 'width'\?\)"),
    ("mlp", {"hidden": [16, -3]}, r"model.args.hidden=\[16, -3\]: a size of model 'mlp' cannot be negative \(got -3\)"),
])
def test_what_cannot_be_built_is_named_with_its_fix(name, args, message):
    with pytest.raises(ConfigError, match=message):
        check_model_args(name, args)
    with pytest.raises(ConfigError, match=message.replace("model.", "model.", 1)):
        build_model(name, **args)


def test_the_section_is_named_and_valid_models_pass():
    with pytest.raises(ConfigError, match=r"^distill.student.args: model 'small_cnn' takes no argument 'depth'"):
        check_model_args("small_cnn", {"depth": 2}, "distill.student")
    check_model_args("resnet18", {"num_classes": 3})  # any torchvision name
    assert build_model("small_cnn", num_classes=3, width=4).head.out_features == 3
    with pytest.raises(ConfigError, match="cannot build model 'small_cnn' with"):
        build_model("small_cnn", num_classes=3, width=4, dropout=2.0)  # nn.Dropout refuses p > 1


def test_build_model_for_fills_in_the_data_and_checks_it_by_one_forward():
    model = build_model_for("mlp", {"hidden": [8]}, 3, (1, 4, 4), seed=0)
    assert model.head.out_features == 3 and model.fc1[0].in_features == 16  # in_features: the 1 * 4 * 4 input values
    same = build_model_for("mlp", {"hidden": [8]}, 3, (1, 4, 4), seed=0)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), same.parameters()))  # the seed draws the weights
    with pytest.raises(ConfigError, match=r"distill.student.args .* cannot take this data's inputs of shape \(3, 2, 2\)"):
        build_model_for("small_cnn", {"width": 4}, 10, (3, 2, 2), where="distill.student")
    with pytest.raises(ConfigError, match=r"gives 5 outputs, the data has 10 classes; drop num_classes from model.args"):
        build_model_for("small_cnn", {"width": 4, "num_classes": 5}, 10, (1, 28, 28))
