"""Config schema: unknown keys and wrong types are errors naming the key; overrides; safe YAML only."""

from __future__ import annotations

import dataclasses

import pytest

from warmstart.config import (OptimizerConfig, TrainerConfig, from_dict, load_config, parse_overrides, read_yaml,
                              save_config, to_dict)
from warmstart.errors import ConfigError


@dataclasses.dataclass
class _Job:
    trainer: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    layers: list[int] = dataclasses.field(default_factory=lambda: [8])


def test_yaml_values_and_overrides_resolve_into_the_schema(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("trainer:\n  max_epochs: 3\n  precision: bf16\noptimizer:\n  name: sgd\n  lr: 1\n")
    job = load_config(_Job, path, ["optimizer.momentum=0.9", "trainer.out_dir=runs/x", "layers=[4, 2]"])
    assert job.trainer.max_epochs == 3 and job.trainer.precision == "bf16"
    assert job.optimizer.lr == 1.0 and isinstance(job.optimizer.lr, float)
    assert job.optimizer.momentum == 0.9 and job.trainer.out_dir == "runs/x" and job.layers == [4, 2]
    save_config(job, tmp_path / "resolved.yaml")
    assert load_config(_Job, tmp_path / "resolved.yaml") == job


def test_unknown_keys_name_the_nearest_valid_key():
    with pytest.raises(ConfigError, match="unknown config key 'trainer.max_epoch' \\(did you mean 'max_epochs'\\?\\)"):
        from_dict(_Job, {"trainer": {"max_epoch": 3}})
    with pytest.raises(ConfigError, match="unknown config key 'optimiser' \\(did you mean 'optimizer'\\?\\)"):
        from_dict(_Job, {"optimiser": {}})


@pytest.mark.parametrize(("data", "message"), [
    ({"trainer": {"max_epochs": "ten"}}, "'trainer.max_epochs' must be int or null, got str 'ten'"),
    ({"trainer": {"max_epochs": 2.5}}, "'trainer.max_epochs' must be int or null, got float"),
    ({"trainer": {"progress": "yes"}}, "'trainer.progress' must be bool"),
    ({"trainer": {"nonfinite": "ignore"}}, "'trainer.nonfinite' must be 'error' or 'skip'"),
    ({"optimizer": {"lr": "fast"}}, "'optimizer.lr' must be float"),
    ({"layers": [1, "x"]}, "'layers\\[1\\]' must be int"),
    ({"trainer": 3}, "'trainer' must be a mapping"),
])
def test_wrong_types_name_the_key_and_the_expected_type(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(_Job, data)


def test_yaml_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("trainer: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_yaml(path)
    with pytest.raises(ConfigError, match="does not exist"):
        read_yaml(tmp_path / "missing.yaml")


def test_overrides_parse_yaml_scalars():
    assert parse_overrides(["a.b=3", "a.c=true", "d=0.5", "e=null", "f=text"]) == {
        "a": {"b": 3, "c": True}, "d": 0.5, "e": None, "f": "text"}
    # YAML 1.1 reads 1e-3 as a string; float fields accept it as the number it is
    assert load_config(OptimizerConfig, None, ["lr=1e-3"]).lr == 1e-3
    with pytest.raises(ConfigError, match="key.sub=value"):
        parse_overrides(["novalue"])
    assert to_dict(TrainerConfig(max_epochs=2))["max_epochs"] == 2


def test_a_path_object_is_accepted_where_a_config_holds_a_path(tmp_path):
    assert from_dict(TrainerConfig, {"out_dir": tmp_path / "run"}).out_dir == str(tmp_path / "run")
    with pytest.raises(ConfigError, match="'trainer.out_dir' must be str or null, got int"):
        from_dict(TrainerConfig, {"out_dir": 3}, prefix="trainer")


def test_a_key_given_twice_is_refused_naming_both_lines(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("trainer:\n  max_epochs: 3\n  seed: 1\n  max_epochs: 30\n")
    with pytest.raises(ConfigError, match=r"key 'max_epochs' is given twice in one section \(lines 2 and 4\)"):
        read_yaml(path)


def test_an_alias_bomb_is_refused_at_once(tmp_path):
    import time

    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]  # 10^9 values expanded
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\nmodel:\n  args: *a8\n")
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=r"expands to 2,345,679,012 values.*without aliases"):
        read_yaml(path)
    assert time.perf_counter() - started < 1.0
    path.write_text("a: &a [1, *a]\n")
    with pytest.raises(ConfigError, match="contains itself"):
        read_yaml(path)
    path.write_text("base: &base {lr: 0.1}\noptimizer: *base\n")  # a small alias is fine
    assert read_yaml(path)["optimizer"] == {"lr": 0.1}


def test_a_tab_and_a_tag_are_named_with_their_line_and_fix(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("trainer:\n\tmax_epochs: 3\n")
    with pytest.raises(ConfigError, match=r"at line 2, column 1 .*indents with spaces, not tabs"):
        read_yaml(path)
    path.write_text("trainer: !custom 3\n")
    with pytest.raises(ConfigError, match="tags .* are not allowed"):
        read_yaml(path)


def test_none_on_the_command_line_is_null_not_the_text_none():
    assert parse_overrides(["trainer.out_dir=None", "name=none", "text='None'"]) == {
        "trainer": {"out_dir": None}, "name": None, "text": "None"}
