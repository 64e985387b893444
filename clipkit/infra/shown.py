"""Text as a page or a terminal shows it: control characters as their codes, long cells cut.

A caption is data, not markup or terminal control: a NUL, an escape sequence (which would
recolour or rewrite the user's terminal) or a lone surrogate (from an undecodable file name,
which no UTF-8 page can hold) is shown as its code, ``\\x00``, ``\\x1b`` or ``\\udcff``.
"""

from __future__ import annotations

import re

# C0 controls but tab and newline (and carriage return), DEL, C1 controls, lone surrogates.
_UNPRINTABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def printable(text: str) -> str:
    """``text`` with each control character and lone surrogate written as its code."""
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def clipped(text: str, limit: int) -> str:
    """``printable(text)``, cut to ``limit`` characters with a note of how many more there
    were: a 100 KB caption is one cell, not 18,799 lines of a terminal table."""
    shown = printable(text)
    if len(shown) <= limit:
        return shown
    return f"{shown[:limit]}… ({len(shown) - limit:,} more characters)"
