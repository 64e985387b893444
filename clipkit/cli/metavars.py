"""Help that names values the way command-line users read them, not as Python types.

Typer's own placeholders are its type names (``--out <path>``, ``--model <str>``,
``Usage: clipkit train [OPTIONS] {data}``). Every command here is a ``Command`` (a group, a
``Group``): each option without a metavar of its own gets ``TEXT``, ``PATH``, ``INTEGER``,
``FLOAT`` or its choices ``[a|b]``, and the usage line shows arguments as ``DATA`` /
``[QUERY]`` / ``SOURCES...``, as click and the ``hf`` CLI do.
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperArgument, TyperCommand, TyperGroup

# Typer's type names -> what the help shows; a type not named here shows its name in capitals.
PLACEHOLDERS = {
    "str": "TEXT",
    "text": "TEXT",
    "path": "PATH",
    "file": "FILE",
    "directory": "FOLDER",
    "int": "INTEGER",
    "integer": "INTEGER",
    "int range": "INTEGER",
    "integer range": "INTEGER",
    "float": "FLOAT",
    "float range": "FLOAT",
}


class Command(TyperCommand):
    """A Typer command whose help and usage name values in plain words."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _name_values(self.params)

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = param.metavar or (param.name or "").upper()
                pieces.append(name if param.required else f"[{name}]")
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces


class Group(TyperGroup):
    """A Typer group (``clipkit models``) whose own options are named like a command's."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _name_values(self.params)


def _name_values(params: list[Any]) -> None:
    for param in params:
        if param.metavar is None and not getattr(param, "is_flag", False):
            param.metavar = _placeholder(param)


def _placeholder(param: Any) -> str:
    if isinstance(param, TyperArgument):
        return (param.name or "").upper() + ("..." if param.nargs != 1 else "")
    choices = getattr(param.type, "choices", None)
    if choices:
        values = [getattr(choice, "value", choice) for choice in choices]
        return "[" + "|".join(str(value) for value in values) + "]"
    name = str(getattr(param.type, "name", "text"))
    return PLACEHOLDERS.get(name, name.upper()) + ("..." if param.nargs != 1 else "")
