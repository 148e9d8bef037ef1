"""The package's import graph: no circles, and no module imports a layer above its own (nor a sibling method).

Every import counts, also those inside functions and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "warmstart"
# lower layers never import higher ones; the method packages of layer 3 never import one another
LAYERS = [
    ("warmstart.errors", "warmstart._lazy", "warmstart._memory", "warmstart._openmp"),
    ("warmstart.config", "warmstart._runtime", "warmstart._batches", "warmstart._epoch", "warmstart._progress",
     "warmstart.checkpoint", "warmstart.models", "warmstart.heads", "warmstart.data", "warmstart.distributed",
     "warmstart.optim", "warmstart.proximal", "warmstart._run_dir", "warmstart._resume", "warmstart.callbacks",
     "warmstart._blocks", "warmstart.evaluation", "warmstart.efficientnet", "warmstart.selection",
     "warmstart._threads"),
    ("warmstart.trainer",),
    ("warmstart.pretrain", "warmstart.finetune", "warmstart.distill"),
    ("warmstart.compress", "warmstart.jobs"),
    ("warmstart.cli", "warmstart.__main__", "warmstart"),
]
METHODS = ("warmstart.pretrain", "warmstart.finetune", "warmstart.distill")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str) -> set[str]:
    tree = ast.parse(MODULES[name].read_text())
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:  # "from warmstart import distributed" imports the module warmstart.distributed
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imports(name) for name in MODULES}


def _layer(name: str) -> tuple[int, str]:
    best = (-1, "")
    for rank, group in enumerate(LAYERS):
        for prefix in group:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > len(best[1]):
                best = (rank, prefix)
    return best


def test_there_are_no_import_circles():
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(GRAPH[node]):
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        path.pop()
        state[node] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)


def test_no_module_imports_upward_or_sideways_between_methods():
    problems = []
    for module, targets in GRAPH.items():
        rank, group = _layer(module)
        assert rank >= 0, f"{module} is in no layer of LAYERS: add it"
        for target in targets:
            target_rank, target_group = _layer(target)
            if target_rank > rank and module != "warmstart" and not module.endswith(".__main__"):
                problems.append(f"{module} (layer {rank}) imports {target} (layer {target_rank})")
            if group in METHODS and target_group in METHODS and target_group != group:
                problems.append(f"{module} imports the sibling method package {target}")
    assert not problems, "\n".join(problems)
