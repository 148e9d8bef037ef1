"""MkDocs hooks: the API reference of every public name and the config reference, generated from the code.

A page holding ``<!-- public: MODULE -->`` gets one ``::: location`` entry (rendered by mkdocstrings from the
docstring) per name in ``MODULE.__all__``; ``<!-- config-reference -->`` gets every key of every command's
config, from the schema dataclasses and their docstrings. Nothing is written twice by hand, so a new public
name or config key cannot go undocumented.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import types
import typing
from typing import Any

PUBLIC = re.compile(r"<!-- public: ([\w.]+) -->")
CONFIG = "<!-- config-reference -->"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    markdown = PUBLIC.sub(lambda m: public_entries(m.group(1)), markdown)
    if CONFIG in markdown:
        markdown = markdown.replace(CONFIG, config_reference())
    return markdown


def public_names(module_name: str) -> list[tuple[str, str]]:
    """``(name, location)`` of every name in ``module.__all__``: where mkdocstrings finds its docstring."""
    module = importlib.import_module(module_name)
    exports = getattr(module, "_EXPORTS", {})
    out = []
    for name in module.__all__:
        obj = getattr(module, name)
        if isinstance(obj, types.ModuleType):
            out.append((name, obj.__name__))
        elif inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj):
            out.append((name, f"{obj.__module__}.{obj.__qualname__}"))
        else:  # a constant: where the lazy table, or the module, defines it
            out.append((name, f"{exports.get(name, module_name)}.{name}"))
    return out


def public_entries(module_name: str) -> str:
    """mkdocstrings' ``:::`` entry for every public name; a public sub-module is pointed to its own page."""
    module = importlib.import_module(module_name)
    lines = []
    for name, location in public_names(module_name):
        if isinstance(getattr(module, name), types.ModuleType):
            lines.append(f"## `{name}`\n\nThe `{location}` module, on its own page of this reference.\n")
        else:
            lines.append(f"::: {location}\n")
    return "\n".join(lines)


def config_reference() -> str:
    """Every command's config keys: a table per section, each key's type, default and meaning."""
    from warmstart.jobs.schema import COMMANDS

    parts = []
    for command in COMMANDS:
        title = f"warmstart {command.name}" + (f" (task: {command.task})" if command.task else "")
        parts.append(f"## `{title}`\n\n{command.help}. Example: `warmstart {command.name} {command.example}`\n")
        parts += _tables(command.schema, "")
    return "\n".join(parts)


def _tables(schema: type, prefix: str) -> list[str]:
    docs = _attribute_docs(schema)
    hints = typing.get_type_hints(schema)
    rows, nested = [], []
    for field in dataclasses.fields(schema):
        kind = hints[field.name]
        inner = _dataclass_of(kind)
        key = f"{prefix}{field.name}"
        if inner is not None:
            nested.append((inner, f"{key}."))
            rows.append(f"| `{key}` | section | | {docs.get(field.name, '')} (below) |")
            continue
        rows.append(f"| `{key}` | `{_type_name(kind)}` | `{_default(field)}` | {docs.get(field.name, '')} |")
    head = f"### `{prefix.rstrip('.') or 'top level'}` ({schema.__name__})\n\n| key | type | default | meaning |\n|---|---|---|---|"
    out = [head + "\n" + "\n".join(rows) + "\n"]
    for inner, key in nested:
        out += _tables(inner, key)
    return out


def _dataclass_of(kind: Any) -> type | None:
    if dataclasses.is_dataclass(kind):
        return kind
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    return args[0] if len(args) == 1 and dataclasses.is_dataclass(args[0]) else None


def _type_name(kind: Any) -> str:
    text = str(kind).replace("typing.", "").replace(" | ", " or ")  # a | would end the table cell
    return re.sub(r"<class '([\w.]+)'>", lambda m: m.group(1).rsplit(".", 1)[-1], text)


def _default(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        return repr(field.default)
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = field.default_factory()  # type: ignore[misc]
        return "{...}" if dataclasses.is_dataclass(value) else repr(value)
    return "required"


def _attribute_docs(schema: type) -> dict[str, str]:
    """The ``Attributes:`` section of a Google-style docstring: name -> its text on one line (|s escaped)."""
    docs: dict[str, str] = {}
    for cls in reversed(schema.__mro__):
        text = inspect.cleandoc(cls.__doc__ or "")
        if "Attributes:" not in text:
            continue
        current = None
        for line in text.split("Attributes:", 1)[1].splitlines():
            match = re.match(r"^    (\w+): (.*)", line)
            if match:
                current = match.group(1)
                docs[current] = match.group(2)
            elif line.startswith("        ") and current:
                docs[current] += " " + line.strip()
            elif line.strip() and not line.startswith(" "):
                break
    return {k: v.replace("|", "\\|") for k, v in docs.items()}
