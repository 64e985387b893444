"""Config dataclasses check their own fields: paths as str or Path, wrong types refused by name.

A service's config is its Python API: ``SearchConfig(index_dir="index")`` must work as
``Path("index")`` does, and ``SearchConfig(k="10")`` must fail where it is written, not deep
inside with ``'str' / 'str'``.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import types
import typing
from pathlib import Path
from typing import Any

from clipkit.errors import UsageError


def check_config(config: Any) -> None:
    """Check and normalise a config dataclass's fields, from its ``__post_init__``.

    A field annotated ``Path`` takes a ``str`` or any ``os.PathLike`` and holds a ``Path``;
    one annotated ``str`` takes a path too and holds its text; a ``tuple[...]`` of either
    takes a list, or one value alone. ``int``, ``float`` and ``bool`` fields must hold one
    (a ``bool`` is not an ``int`` here). An enum field takes a member or its value. Other
    annotations are left to the service.

    Raises:
        UsageError: a field holds a value of another type, naming the field and that type.
    """
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        try:
            checked = _checked(value, hints[field.name])
        except TypeError as error:
            raise UsageError(
                f"{type(config).__name__}.{field.name} must be {error}, not "
                f"{type(value).__name__} ({value!r:.60}).",
                "Pass a value of that type; paths may be str or pathlib.Path.",
            ) from None
        if checked is not value:
            object.__setattr__(config, field.name, checked)


def _checked(value: Any, annotation: Any) -> Any:
    """``value`` as ``annotation`` wants it; TypeError(what it wants) if it cannot be."""
    options = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
    if value is None and type(None) in options:
        return None
    wanted = [option for option in options if option is not type(None)]
    for option in wanted:
        if typing.get_origin(option) is tuple:
            (item, *rest) = typing.get_args(option)
            if rest != [Ellipsis]:
                return value  # a fixed-shape tuple: the service's business
            values = [value] if isinstance(value, (str, os.PathLike)) else value
            try:
                if isinstance(values, (list, tuple)):
                    return tuple(_checked(one, item) for one in values)
            except TypeError:
                pass
            raise TypeError(f"a tuple whose items are each {_name(item)}")
        if option is Path and isinstance(value, (str, os.PathLike)):
            return value if isinstance(value, Path) else Path(value)
        if option is str and isinstance(value, (str, os.PathLike)):
            return value if isinstance(value, str) else os.fspath(value)
        if option is bool and isinstance(value, bool):
            return value
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        if isinstance(option, type) and issubclass(option, enum.Enum):
            if isinstance(value, option):
                return value
            try:
                return option(value)  # EmbedConfig(kind="image") as Kind.IMAGE
            except ValueError:
                raise TypeError("one of " + ", ".join(repr(m.value) for m in option)) from None
        if option not in (Path, str, bool, int, float):
            return value  # dicts and the like: left to the service
    raise TypeError(" or ".join(_name(option) for option in wanted) or "None")


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _name(annotation: Any) -> str:
    if annotation is Path:
        return "a path"
    return {str: "a str", int: "an int", float: "a number", bool: "a bool"}.get(
        annotation, getattr(annotation, "__name__", str(annotation))
    )
