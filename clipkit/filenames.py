"""File names as text. Parquet, JSON, CSV and HTML need valid Unicode, but a POSIX file name is
any bytes: Python hands a name that is not UTF-8 over with surrogate escapes, and writing one
fails. clipkit shows and stores such a name with ``\\xNN`` escapes for its bad bytes, the way
``bytes.decode(errors="backslashreplace")`` writes them, and maps it back when opening it.
"""

from __future__ import annotations

import os
import re

# surrogateescape only ever stands in for bytes 0x80-0xff.
_ESCAPED_BYTE = re.compile(r"\\x([89a-f][0-9a-f])")


def as_text(path: str | os.PathLike[str]) -> str:
    """``path`` as valid Unicode: unchanged when it is, else with ``\\xNN`` for each bad byte."""
    name = os.fspath(path)
    try:
        return os.fsencode(name).decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that stands for no byte (from JSON, say)
        return name.encode("utf-8", "backslashreplace").decode("utf-8")


def os_path(text: str) -> str:
    """The file name ``as_text`` made ``text`` from (``text`` itself when that file exists)."""
    if "\\x" not in text or os.path.lexists(text):
        return text
    return _ESCAPED_BYTE.sub(lambda match: chr(0xDC00 + int(match.group(1), 16)), text)
