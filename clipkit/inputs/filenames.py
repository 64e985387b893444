"""File names as text. Parquet, JSON, CSV and HTML need valid Unicode, but a POSIX file name is
any bytes: Python hands a name that is not UTF-8 over with surrogate escapes, and writing one
fails. clipkit shows and stores such a name with ``\\xNN`` escapes for its bad bytes, the way
``bytes.decode(errors="backslashreplace")`` writes them, and maps it back when opening it.

Uris in an embeddings folder are relative to its *base*, the folder where the first
``clipkit embed`` into it ran (recorded in every shard): a run from anywhere, with the path
typed either way, names a file as the first run did (:class:`UriFrame`), and readers anywhere
find the file (:func:`reading_base`, :func:`locate`). A file outside the base is named by its
absolute path.

Tables name images by path (relative to the table) or, often, by URL: a ``file://`` URL is a
local path; any other URL is kept as written, so that reading it fails with a clear reason.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

URL_NOT_READ = "a URL: clipkit reads local files (download them first, e.g. with img2dataset)"
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
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


def is_url(text: str) -> bool:
    """True for ``scheme://…`` (``http``, ``s3``, …), whatever the scheme."""
    return _URL.match(text) is not None


def table_path(value: object, table: Path) -> str:
    """An image cell of ``table`` as a uri: absolute, ``~`` expanded, relative to the table's
    folder; a ``file://`` URL as its local path; any other URL unchanged."""
    text = str(value)
    if is_url(text):
        parts = urlsplit(text)
        if parts.scheme.lower() != "file" or parts.netloc not in ("", "localhost"):
            return text
        text = unquote(parts.path)
    file = Path(text).expanduser()
    return as_text(file if file.is_absolute() else table.parent / file)


@dataclass(frozen=True)
class UriFrame:
    """Writes the paths this process was given (relative to ``cwd`` or absolute) as uris in an
    embeddings folder, the same however they were typed: relative to ``base`` for a file
    inside it, absolute for one outside it."""

    base: str  # as os functions take it (see os_path)
    cwd: str

    def uri(self, path: str | os.PathLike[str]) -> str:
        name = os.fspath(path)
        if is_url(name):
            return as_text(name)
        folder, file = os.path.split(name)
        return as_text(os.path.join(_folder_uri(folder, self.base, self.cwd), file))


@functools.lru_cache(maxsize=4096)  # a walk names thousands of files per folder
def _folder_uri(folder: str, base: str, cwd: str) -> str:
    full = os.path.normpath(os.path.join(cwd, folder))
    # Lexically first (a symlinked folder inside the base keeps its name); a path that reaches
    # the base through a symlink (the base is a physical path, from getcwd) is inside it too.
    inside = _relative_inside(full, base) or _relative_inside(os.path.realpath(full), base)
    if inside is None:
        return full
    return "" if inside == os.curdir else inside


def _relative_inside(path: str, base: str) -> str | None:
    relative = os.path.relpath(path, base)
    return None if relative == os.pardir or relative.startswith(os.pardir + os.sep) else relative


def reading_base(recorded: str | None) -> str | None:
    """The folder to join a reader's relative uris to: the recorded base when it is another
    folder that still exists; else None, and they open from here as they are (the base is the
    working folder, or moved along with its images, or a folder from before bases were
    recorded)."""
    if recorded is None or recorded == as_text(os.getcwd()):
        return None
    return recorded if os.path.isdir(os_path(recorded)) else None


def locate(uri: str, base: str | None) -> str:
    """A stored uri as a path that opens from here, given :func:`reading_base`'s ``base``."""
    if base is None or os.path.isabs(uri) or is_url(uri):
        return uri
    return os.path.join(base, uri)
