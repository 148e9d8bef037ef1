"""The manual (docs/): it builds strictly, every public name has its reference entry and docstring, every code block
of the guides runs."""

from __future__ import annotations

import importlib
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = ROOT / "docs" / "pages"
GUIDES = sorted([PAGES / "getting-started.md", *(PAGES / "guides").glob("*.md")])
BLOCKS = [(page, index, block) for page in GUIDES
          for index, block in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S))]
PACKAGES = ("warmstart", "warmstart.pretrain", "warmstart.finetune", "warmstart.selection", "warmstart.distill",
            "warmstart.compress", "warmstart.data", "warmstart.models", "warmstart.distributed")

sys.path.insert(0, str(ROOT / "docs"))
import hooks  # noqa: E402  (docs/hooks.py: what the build generates the reference from)


def test_the_manual_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "-f", "docs/mkdocs.yml", "--strict", "-q",
                            "-d", str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True,
                           env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, timeout=300)
    assert built.returncode == 0, built.stderr[-4000:]
    reference = (tmp_path / "site" / "reference" / "finetune" / "index.html").read_text()
    assert "fine_tune" in reference and "Fine-tune a pretrained classifier in one call" in reference
    config = (tmp_path / "site" / "guides" / "config-reference" / "index.html").read_text()
    assert "trainer.max_epochs" in config and "finetune.methods" in config  # generated from the schema


def test_every_public_name_has_a_reference_page_and_a_docstring():
    pages = {path.read_text() for path in (PAGES / "reference").glob("*.md")}
    for package in PACKAGES:
        assert any(f"<!-- public: {package} -->" in page for page in pages), package
        module = importlib.import_module(package)
        for name, location in hooks.public_names(package):
            obj = getattr(module, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                assert inspect.getdoc(obj), f"{package}.{name} ({location}) has no docstring"


def test_every_config_key_is_in_the_generated_reference():
    from warmstart.jobs.schema import COMMANDS

    reference = hooks.config_reference()
    for command in COMMANDS:
        assert f"warmstart {command.name}" in reference
    assert "`trainer.max_epochs`" in reference and "`finetune.methods`" in reference and "`data.shots`" in reference


@pytest.mark.parametrize("page, index, block", BLOCKS, ids=[f"{p.stem}-{i + 1}" for p, i, _ in BLOCKS])
def test_each_python_block_of_the_guides_runs(page, index, block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a fresh namespace and folder per block, as when pasted alone
    exec(compile(block, f"{page.name} block {index + 1}", "exec"), {"__name__": "__docs__"})  # noqa: S102
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing left behind in the working folder


def test_the_guides_have_code_for_every_module():
    joined = "\n".join(block for _, _, block in BLOCKS)
    for name in ("ProximalTrainer", "fine_tune", "DistillTrainer", "prune", "load_pretrained"):
        assert name in joined, name
