"""The README: every Python block runs (in order, one namespace) and CI calls the README's test command."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_each_python_block_runs_on_its_own(index, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # a fresh namespace and folder per block, as when pasted alone
    exec(compile(BLOCKS[index], f"README.md block {index + 1}", "exec"), {"__name__": "__readme__"})  # noqa: S102
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing left behind in the working folder
    out = capsys.readouterr().out
    if index == 0:
        accuracy = re.search(r"'accuracy': ([0-9.]+)", out)
        assert accuracy and float(accuracy.group(1)) > 0.6  # the ten-line example really transfers


def test_there_are_code_blocks_for_every_module():
    assert len(BLOCKS) >= 5 and any("load_pretrained" in block for block in BLOCKS)


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    test_command = commands[1].strip()
    assert test_command.endswith("python -m pytest")
    assert test_command in (ROOT / ".ci" / "run").read_text()
    assert "warmstart run configs/digits_transfer.yaml" in commands[0]
