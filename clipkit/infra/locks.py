"""One writer per output folder, and readers that never see half of a multi-file update.

Two commands writing one folder at once would each number their shards (or checkpoints) from
what they saw at the start and rename their files over the other's: work lost without an error.
A command that writes a folder holds an exclusive ``flock`` on ``.clipkit.lock`` inside it; a
second one is refused and told who holds it. The kernel drops the lock when its process ends,
however it ends (``kill -9`` included), so a lock is never stale. The file itself stays; its
leading dot keeps it out of ``pyarrow.dataset``.

A folder whose files only make sense together (an index: vectors, row map, sidecar) is
replaced under ``.clipkit.publish``: the writer renames its staged files holding it
exclusively, readers open the set holding it shared. The file says "publishing" while renames
are under way, so a set left half-replaced by a crash is refused rather than read.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from clipkit.errors import InputError
from clipkit.infra.atomic import Rename, make_folder

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, and no guard
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".clipkit.lock"
PUBLISH_FILE = ".clipkit.publish"
PUBLISHING = "publishing"

# The descriptors of the writer locks this process holds. A forked child (a decode worker)
# shares each one's open file, and with it the lock: killed with -9, the command's orphaned
# workers held its folder for seconds more. So a child lets go of them as it starts.
_held: set[int] = set()


def _let_go_in_child() -> None:
    """After fork, in the child: point each held lock's descriptor at /dev/null. The lock
    stays with the parent alone; the number stays open, so nothing else can take it and be
    closed by the parent's file object if the child ever collects it."""
    if not _held:
        return
    null = os.open(os.devnull, os.O_RDWR)
    for fd in _held:
        with contextlib.suppress(OSError):
            os.dup2(null, fd)
    os.close(null)
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_let_go_in_child)


@contextlib.contextmanager
def writer_lock(
    folder: str | os.PathLike[str],
    command: str,
    *,
    active: bool = True,
    create: bool = True,
    wait: Callable[[str], None] | None = None,
) -> Iterator[Path]:
    """Make ``folder`` (if missing) and hold its lock for the block.

    Args:
        command: what this process is doing, shown to a process that finds the lock held.
        active: False on the ranks of a torchrun job other than rank 0, which holds the lock
            for all of them.
        create: False where the folder must exist already (an update): a missing one is left
            missing, for the command's own error.
        wait: where the lock is held, wait for it (rather than refuse) after telling this
            function who holds it.

    Raises:
        InputError: another process holds the lock and ``wait`` is None (its pid and command
            are named), or the folder cannot be made.
    """
    folder = make_folder(folder) if active and create else Path(folder)
    if not active or fcntl is None or not folder.is_dir():
        yield folder
        return
    path = folder / LOCK_FILE
    try:
        handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held across the yield
    except OSError as error:
        raise InputError(
            f"Cannot write in {folder}: {error.strerror}.", "Choose a folder you can write to."
        ) from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locked = True
        except BlockingIOError:
            handle.seek(0)
            holder = _holder(handle.read().strip())
            if wait is None:
                raise InputError(
                    f"{folder} is being written by another clipkit command ({holder}).",
                    "Wait for it to finish, or write to another folder. Two commands writing "
                    "one folder would overwrite each other's files.",
                ) from None
            wait(holder)
            fcntl.flock(handle, fcntl.LOCK_EX)
            locked = True
        except OSError:
            locked = False  # a file system without locks: go on unguarded, as before
        if locked:
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()}: clipkit {command}\n")
            handle.flush()
            _held.add(handle.fileno())
        try:
            yield folder  # closing the handle releases the lock
        finally:
            _held.discard(handle.fileno())


def _holder(recorded: str) -> str:
    """Who holds a lock, as its file records it ("pid N: clipkit COMMAND"), and whether that
    process still runs (a process it started may hold the lock after it ended)."""
    if not recorded:
        return "another process"
    pid = recorded.partition(":")[0].removeprefix("pid ").strip()
    if pid.isdigit() and not process_alive(int(pid)):
        return f"{recorded}, which has ended: a process it started still holds the folder"
    return recorded


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (another user's counts): a pid a file recorded may be
    of a process that has ended."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: it exists
        return True
    return True


class HalfPublished(InputError):
    """Files that belong together were being replaced when their writer stopped."""


@contextlib.contextmanager
def publishing(folder: Path) -> Iterator[Rename | None]:
    """Hold ``folder``'s publish lock exclusively while the block renames a set of files.

    Waits for readers that are opening the old set. Yields the function the block must rename
    with (``os.replace`` that counts). If the block fails after its first rename, the marker
    stays, so that readers learn the set may be mixed; before it, the old set is whole.
    """
    if fcntl is None:
        yield None
        return
    with open(folder / PUBLISH_FILE, "a+", encoding="utf-8") as handle:
        with contextlib.suppress(OSError):  # a file system without locks: the marker still works
            fcntl.flock(handle, fcntl.LOCK_EX)
        _mark(handle, f"{PUBLISHING} (pid {os.getpid()})\n")
        renamed: list[Path] = []

        def rename(source: Path, target: Path) -> None:
            os.replace(source, target)
            renamed.append(target)

        try:
            yield rename
        except BaseException:
            if not renamed:
                _mark(handle, "")
            raise
        _mark(handle, "")


@contextlib.contextmanager
def reading_published(folder: Path, what: str, hint: str) -> Iterator[None]:
    """Hold ``folder``'s publish lock shared while the block opens a set of files.

    A folder without the lock file (made by an older clipkit, or read-only and never updated)
    is read as it is.

    Raises:
        HalfPublished: the last writer stopped between its renames (``what`` and ``hint`` word
            the error).
    """
    try:
        handle = open(folder / PUBLISH_FILE, encoding="utf-8")  # noqa: SIM115 - held across the yield
    except OSError:
        handle = None
    if handle is None:
        yield
        return
    with handle:
        if fcntl is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(handle, fcntl.LOCK_SH)
        if handle.read().startswith(PUBLISHING):
            raise HalfPublished(
                f"{what} in {folder} was being replaced when its writer stopped: its files may "
                "not belong together.",
                hint,
            )
        yield


@contextlib.contextmanager
def repairing(folder: Path) -> Iterator[Callable[[], None] | None]:
    """Hold ``folder``'s publish lock exclusively, to repair a set a writer left half-replaced.

    Yields the function that marks the set whole again, or None when it is not marked (never
    was, or another process repaired it while this one waited for the lock). Holding the lock
    means no writer is renaming: one that left the marker set has stopped.
    """
    try:
        handle = open(folder / PUBLISH_FILE, "r+", encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError:
        yield None
        return
    with handle:
        if fcntl is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(handle, fcntl.LOCK_EX)
        yield (lambda: _mark(handle, "")) if handle.read().startswith(PUBLISHING) else None


def _mark(handle: IO[str], text: str) -> None:
    handle.seek(0)
    handle.truncate()
    handle.write(text)
    handle.flush()
    os.fsync(handle.fileno())
