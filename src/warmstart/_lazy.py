"""Lazy package namespaces: a name is imported from its module on first use, so ``import warmstart`` stays cheap."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_namespace(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for a package whose public names live in its submodules.

    Args:
        package: the package's ``__name__``.
        exports: public name -> the module that defines it (a name equal to a submodule's is that module).

    Examples:
        >>> getattr_, dir_ = lazy_namespace("warmstart", {"ConfigError": "warmstart.errors"})
        >>> getattr_("ConfigError").__name__
        'ConfigError'
    """
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module '{package}' has no attribute '{name}'")
        loaded = importlib.import_module(module)
        value = loaded if module == f"{package}.{name}" else getattr(loaded, name)
        namespace[name] = value  # later lookups are plain attribute reads
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
