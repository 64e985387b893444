"""Lazy package exports (PEP 562): a package names its public API without importing it.

``import clipkit.embed`` must stay light (``clipkit --help`` imports the CLI, which names the
services), so a package's ``__init__`` maps each public name to the module that defines it and
imports that module when the name is first read. A service package is also callable:
``embed(config)`` is ``embed.embed(config)``, which is what ``from clipkit import embed`` gives.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable, Mapping
from typing import Any


class ServiceModule(types.ModuleType):
    """A service package that calls its own service: ``clipkit.search(config)``."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self, self.__name__.rpartition(".")[2])(*args, **kwargs)


def export_lazily(
    package: str, exports: Mapping[str, str], *, callable_service: bool = False
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``, importing each name on first use.

    Args:
        package: the package's ``__name__``.
        exports: public name -> module that defines it (absolute, or relative to the package:
            ``".run"``); a name that maps to ``""`` is the submodule of that name itself.
        callable_service: make the package callable as its service (the function named like
            the package, which ``exports`` must hold).
    """
    module = sys.modules[package]
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
