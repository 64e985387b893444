"""Reading an input file's bytes safely: regular files only (a named pipe or a device would
block for ever), WebDataset members by their ``SHARD.tar#MEMBER`` uri, and every failure as a
DecodeError with a reason. No heavy imports: the torch-free runtime reads files with it."""

from __future__ import annotations

import errno
import os

from clipkit.inputs.decode import DecodeError, require_regular_file
from clipkit.inputs.filenames import URL_NOT_READ, is_url, os_path
from clipkit.inputs.tarshards import MEMBER_SEPARATOR, read_member, split_member_uri


def read_bytes(path: str, *, regular_only: bool = True) -> bytes:
    """The bytes of a file (or ``SHARD.tar#MEMBER``), or a DecodeError naming why not.

    ``path`` may be a name as :func:`clipkit.inputs.filenames.as_text` shows it. Only regular files
    are read, unless ``regular_only`` is False (a query image the user names may come from a
    pipe: ``--image <(curl …)``).
    """
    path = os_path(path)
    if is_url(path) and not os.path.lexists(path):
        raise DecodeError("read", URL_NOT_READ)
    if MEMBER_SEPARATOR in path and split_member_uri(path) and not os.path.exists(path):
        return read_member(path)
    try:
        # Non-blocking, so that opening a named pipe returns at once and fails the check below.
        nonblocking = getattr(os, "O_NONBLOCK", 0) if regular_only else 0
        descriptor = os.open(path, os.O_RDONLY | nonblocking)
        with open(descriptor, "rb") as handle:
            if regular_only:
                require_regular_file(os.fstat(descriptor).st_mode)
            return handle.read()
    except IsADirectoryError:
        raise DecodeError("read", "is a directory, not a file") from None
    except FileNotFoundError:
        raise DecodeError("read", "missing (or a broken symlink)") from None
    except PermissionError:
        raise DecodeError("read", "permission denied") from None
    except OSError as error:
        reason = errno.errorcode.get(error.errno or 0, "I/O error")
        raise DecodeError("read", f"{reason}: {error.strerror}") from None
