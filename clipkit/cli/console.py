"""Where the CLI writes: data to stdout, diagnostics and progress to stderr, and errors as
``Error:`` / ``Hint:`` lines (every module of ``cli/`` prints through these)."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

stdout = Console(highlight=False, soft_wrap=True)
stderr = Console(stderr=True, highlight=False)


def print_error(message: str, hint: str | None) -> None:
    """``Error: message`` and ``Hint: hint`` on stderr."""
    # Text, not markup: a message quotes paths and input, and "[...]" in them is not a style.
    stderr.print(Text.assemble(("Error:", "bold red"), " ", message))
    if hint:
        stderr.print(Text.assemble(("Hint:", "bold"), " ", hint))
