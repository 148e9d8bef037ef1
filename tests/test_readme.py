"""The README: a front page of at most about 200 lines, its Python block runs, and CI calls its test command."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_the_quickstart_runs_and_really_transfers(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # a fresh namespace and folder, as when pasted alone
    assert len(BLOCKS) == 1
    exec(compile(BLOCKS[0], "README.md block 1", "exec"), {"__name__": "__readme__"})  # noqa: S102
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing left behind in the working folder
    accuracy = re.search(r"'accuracy': ([0-9.]+)", capsys.readouterr().out)
    assert accuracy and float(accuracy.group(1)) > 0.6


def test_the_readme_is_a_front_page_whose_links_resolve():
    assert len(README.splitlines()) <= 210
    for target in re.findall(r"\]\(([^)#]+)", README):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    test_command = commands[1].strip()
    assert test_command.endswith("python -m pytest")
    assert test_command in (ROOT / ".ci" / "run").read_text()
    assert "warmstart run configs/digits_transfer.yaml" in commands[0]
