"""Lazy package exports (PEP 562): a package names its public API without importing it.

``import clipkit.embed`` must stay light (``clipkit --help`` imports the CLI, which names the
services), so a package imports its public names only under ``TYPE_CHECKING``, where type
checkers and editors see them, and :func:`export_lazily` reads that block to import each name
when it is first used. A service package is also callable: ``embed(config)`` is
``embed.embed(config)``, which is what ``from clipkit import embed`` gives (a type checker sees
the function itself)::

    if TYPE_CHECKING:
        from clipkit.embed.run import EmbedConfig, EmbedResult, embed

    __all__ = ["EmbedConfig", "EmbedResult", "embed"]
    __getattr__, __dir__ = export_lazily(__name__, callable_service=True)
"""

from __future__ import annotations

import ast
import importlib
import sys
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


class ServiceModule(types.ModuleType):
    """A service package that calls its own service: ``clipkit.search(config)``."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self, self.__name__.rpartition(".")[2])(*args, **kwargs)


def export_lazily(
    package: str, exports: Mapping[str, str] | None = None, *, callable_service: bool = False
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``, importing each name on first use.

    Args:
        package: the package's ``__name__``.
        exports: public name -> module that defines it (absolute, or relative to the package:
            ``".run"``); a name that maps to ``""`` is the submodule of that name itself.
            None: read from the package's ``if TYPE_CHECKING:`` imports (see the module doc),
            which must name exactly the package's ``__all__``.
        callable_service: make the package callable as its service (the function named like
            the package, which ``exports`` must hold).
    """
    module = sys.modules[package]
    if exports is None:
        exports = type_checking_exports(module)
        defined = set(module.__dict__)  # __version__, say
        missing = (set(getattr(module, "__all__", ())) - defined) ^ set(exports)
        assert not missing, f"{package}: __all__ and the TYPE_CHECKING imports differ: {missing}"
    if callable_service:
        module.__class__ = ServiceModule

    def __getattr__(name: str) -> Any:
        where = exports.get(name)
        if where is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        if not where:
            return importlib.import_module(f"{package}.{name}")
        value = getattr(importlib.import_module(where, package), name)
        setattr(module, name, value)  # later reads are plain attribute lookups
        return value

    def __dir__() -> list[str]:
        return sorted(set(module.__dict__) | set(exports))

    return __getattr__, __dir__


def type_checking_exports(module: types.ModuleType) -> dict[str, str]:
    """Name -> defining module of each ``from X import name`` under the module's ``if
    TYPE_CHECKING:``; a name that is a subpackage of the module maps to ``""`` (the
    subpackage, which a type checker is shown as its service function)."""
    path = Path(module.__file__ or "")
    found: dict[str, str] = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if not (isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"):
            continue
        for statement in node.body:
            if isinstance(statement, ast.ImportFrom) and statement.module:
                for alias in statement.names:
                    name = alias.asname or alias.name
                    subpackage = (path.parent / name / "__init__.py").is_file()
                    found[name] = "" if subpackage else statement.module
    return found
