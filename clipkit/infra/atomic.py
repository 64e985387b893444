"""Output paths: checked before any work starts, folders made with a clear error, and atomic
file writes (a temporary file beside the target, then a rename over it)."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from clipkit.errors import ClipkitError, InputError

Rename = Callable[[Path, Path], None]  # os.replace, or one that records what it renamed


def check_output(target: str | os.PathLike[str], *, folder: bool = False) -> Path:
    """Refuse an output path that cannot be made, before the work whose result it would hold.

    A file target must not be a folder, a folder target must not be a file, and no existing
    ancestor may be a file. Permissions are left to the write, which reports them too.

    Raises:
        InputError: naming the path and what is in the way.
    """
    target = Path(target)
    if folder and target.exists() and not target.is_dir():
        raise InputError(f"{target} is a file, not a folder.", "Choose a new or existing folder.")
    if not folder and target.is_dir():
        raise InputError(f"{target} is a folder, not a file name.", "Give a file path.")
    blocker = next((parent for parent in target.parents if parent.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise InputError(
            f"Cannot write {target}: {blocker} is a file, not a folder.", "Choose another path."
        )
    return target


def make_folder(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` and its parents if missing (an InputError, not an OSError, when it fails)."""
    path = check_output(path, folder=True)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(
            f"Cannot create the folder {path}: {error.strerror}.",
            "Choose a folder you can write to.",
        ) from None
    return path


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it replaces ``target``.

    A crash or exception at any moment leaves either the old file or the new one, never a
    partial file. The temporary lives in the same folder so the final rename is atomic.
    """
    with atomic_paths([target]) as (tmp,):
        yield tmp


@contextlib.contextmanager
def atomic_paths(
    targets: Sequence[str | os.PathLike[str]],
    *,
    commit: Callable[[], contextlib.AbstractContextManager[Rename | None]] = contextlib.nullcontext,
) -> Iterator[list[Path]]:
    """:func:`atomic_path` for files that belong together: all are written, then all renamed.

    The renames run inside ``commit()`` (a lock that readers of the set also take), one after
    the other, so the slow part (writing) happens before anything is replaced. ``commit()``
    may yield the function to rename with, to learn how far the renames got.
    """
    paths = [check_output(target) for target in targets]
    tmps: list[Path] = []
    try:
        for target in paths:
            tmps.append(_temporary(target))
        yield tmps
        for tmp in tmps:
            _fsync(tmp)
            # mkstemp makes the file private (0600); give it the mode a plain open() would have.
            os.chmod(tmp, _NEW_FILE_MODE)
        with commit() as rename:
            for tmp, target in zip(tmps, paths, strict=True):
                (rename or os.replace)(tmp, target)
    except OSError as error:  # a full disk, a quota, an I/O error: the machine, not a bug
        where = paths[0] if len(paths) == 1 else paths[0].parent
        failure = write_failure(where, error)
        _remove(tmps)
        raise failure from None
    except Exception:
        # torch.save, safetensors and FAISS report a full disk in their own words ("unexpected
        # pos …", SafetensorError, "write error"): the free space tells what happened.
        where = paths[0] if len(paths) == 1 else paths[0].parent
        full = _disk_full(where)
        _remove(tmps)
        if full:
            raise write_failure(where, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))) from None
        raise
    except BaseException:
        _remove(tmps)
        raise


# Less than this left on a disk after a write failed: the disk is full (or over quota).
FULL_DISK_BYTES = 1 << 20


def write_failure(path: Path, error: OSError) -> ClipkitError:
    """The error for a write the machine refused: the path, the reason, the space left."""
    reason = error.strerror or str(error).splitlines()[0] or type(error).__name__
    free = _free_bytes(path)
    left = f" ({_readable_size(free)} free on its disk)" if free is not None else ""
    return ClipkitError(
        f"Cannot write {path}: {reason}{left}.",
        "Free some space (or choose another folder) and run the command again; files "
        "already written are kept.",
    )


def _free_bytes(path: Path) -> int | None:
    for folder in (path, *path.parents):
        try:
            return shutil.disk_usage(folder).free
        except OSError:
            continue
    return None


def _disk_full(path: Path) -> bool:
    free = _free_bytes(path)
    return free is not None and free < FULL_DISK_BYTES


def _readable_size(count: int) -> str:
    if count < 1024:
        return f"{count:,} bytes"
    value, unit = count / 1024, "KiB"
    for larger in ("MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, larger
    return f"{value:.1f} {unit}"


# What _temporary names a staged file: ".TARGET." + mkstemp's 8 random characters + ".tmp".
_STAGED = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the staged files that writers killed mid-write left in ``folder`` (a 32 MiB
    ``.state.pt.*.tmp``, say); returns them. Only for a caller that holds the folder's writer
    lock: then no live writer is staging anything there."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    stale = [folder / name for name in names if _STAGED.fullmatch(name)]
    for path in stale:
        with contextlib.suppress(OSError):
            path.unlink()
    return stale


def _temporary(target: Path) -> Path:
    make_folder(target.parent)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as error:
        raise InputError(
            f"Cannot write {target}: {error.strerror}.", "Choose a folder you can write to."
        ) from None
    os.close(fd)
    return Path(name)


def _remove(paths: Sequence[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _new_file_mode() -> int:
    mask = os.umask(0)  # reading the umask means setting it; restore it at once
    os.umask(mask)
    return 0o666 & ~mask


_NEW_FILE_MODE = _new_file_mode()


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
