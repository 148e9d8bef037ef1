"""The README: every Python block runs (in order, one namespace) and CI calls the README's test command."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_python_blocks_run(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert len(blocks) >= 5
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102  (our own README)
    out = capsys.readouterr().out
    accuracy = re.search(r"'accuracy': ([0-9.]+)", out)
    assert accuracy and float(accuracy.group(1)) > 0.6  # the ten-line example really transfers
    assert "load_pretrained" in out


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    test_command = commands[1].strip()
    assert test_command.endswith("python -m pytest")
    assert test_command in (ROOT / ".ci" / "run").read_text()
    assert "warmstart run configs/digits_transfer.yaml" in commands[0]
