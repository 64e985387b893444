"""The command reference, generated from the commands themselves (run by cog: ``make docs``).

README's command table and ``docs/commands.md`` are written by these functions between cog
markers, and ``tests/test_readme.py`` fails when either differs from what the commands say now,
so the documentation cannot drift from ``--help``.
"""

from __future__ import annotations

import os
from typing import Any

import typer
from typer.testing import CliRunner

from clipkit import cli
from clipkit.config import ENV_CONFIG, ENV_MODEL, ENV_RUNTIME

# What the user set must not show as a default: no settings file, no model or runtime variable.
NO_SETTINGS = {ENV_CONFIG: os.devnull, ENV_MODEL: None, ENV_RUNTIME: None}
WIDTH = 88  # columns of the help pages as printed here (a terminal's width changes only wrapping)


def _commands() -> dict[str, Any]:
    """Every command by its full name, in ``clipkit --help``'s order (``models info`` too)."""
    group = typer.main.get_command(cli.app)
    found: dict[str, Any] = {}
    for name, command in group.commands.items():
        found[name] = command
        for sub, subcommand in getattr(command, "commands", {}).items():
            found[f"{name} {sub}"] = subcommand
    return found


def command_table() -> str:
    """A Markdown table: each command and the first line of its help."""
    rows = ["| command | what it does |", "| --- | --- |"]
    for name, command in _commands().items():
        summary = (command.help or "").strip().splitlines()[0]
        rows.append(f"| [`clipkit {name}`](docs/commands.md#clipkit-{name.replace(' ', '-')}) "
                    f"| {summary} |")  # fmt: skip
    return "\n".join(rows) + "\n"


def help_pages() -> str:
    """``clipkit --help`` and every ``clipkit COMMAND --help``, each under its own heading."""
    runner = CliRunner()
    pages = []
    for name in ["", *_commands()]:
        words = name.split()
        result = runner.invoke(
            cli.app, [*words, "--help"], prog_name="clipkit", terminal_width=WIDTH,
            env={"COLUMNS": str(WIDTH), **NO_SETTINGS},
        )  # fmt: skip
        if result.exit_code != 0:
            raise RuntimeError(f"clipkit {name} --help failed: {result.output}")
        title = f"clipkit {name}".strip()
        pages.append(f"## {title}\n\n```\n{result.stdout.rstrip()}\n```\n")
    return "\n".join(pages)
