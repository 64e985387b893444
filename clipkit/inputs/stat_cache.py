"""Trusting a file's recorded content id without reading it (``_files.parquet``, as rclip does).

``embed`` records (size, mtime_ns, id) for the files it reads (for a ``.tar`` member, its
shard's size and mtime). A later run takes the id of a
file whose size and mtime are unchanged, provided that content has a row; any other file is
read and hashed. A stale entry therefore costs a read, never a wrong row.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Collection, Mapping

from clipkit.inputs.filenames import os_path
from clipkit.inputs.tarshards import split_member_uri
from clipkit.store import FileStat


def file_stat(path: str) -> tuple[int, int] | None:
    """(size, mtime_ns) of a regular file, or of the ``.tar`` shard that holds a member (an
    unchanged shard holds unchanged members); None for anything else (URLs, folders)."""
    local = os_path(path)
    shard = split_member_uri(local)
    if shard is not None and not os.path.lexists(local):
        local = shard[0]
    try:
        info = os.stat(local)
    except (OSError, ValueError):
        return None
    return (info.st_size, info.st_mtime_ns) if stat.S_ISREG(info.st_mode) else None


def recorded_id(
    recorded: Mapping[str, FileStat],
    uri: str,
    now: tuple[int, int] | None,
    known_ids: Collection[str],
) -> str | None:
    """The id recorded for ``uri`` if its stat is still ``now`` and the id has a row, else None.

    ``now`` must be taken before the file is read (if it is): a file that changes in between is
    then read again next time, never trusted.
    """
    entry = recorded.get(uri)
    if now is None or entry is None or entry[:2] != now or entry[2] not in known_ids:
        return None
    return entry[2]
