"""build_model and check_model_args: what cannot be built is refused with the fix, before any data or training."""

import pytest

from warmstart.errors import ConfigError
from warmstart.models import build_model, check_model_args


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
