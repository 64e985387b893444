"""WebDataset-style ``.tar`` shards: samples grouped by key, members read by offset.

A sample is the set of members sharing a key (the member name up to its first dot after the
last slash), e.g. ``000123.jpg`` + ``000123.txt``. Members are addressed as
``SHARD.tar#MEMBER`` so that pair lists, failure tables and reports can name them like files;
reading one seeks straight to its bytes, so training can sample shards at random.
"""

from __future__ import annotations

import functools
import os
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from clipkit.inputs.decode import IMAGE_SUFFIXES, DecodeError, require_regular_file
from clipkit.inputs.filenames import as_text, os_path

TAR_SUFFIX = ".tar"
# Member extensions of an image, in the order a sample's image is picked by.
IMAGE_EXTENSIONS = tuple(suffix.lstrip(".") for suffix in sorted(IMAGE_SUFFIXES))
MEMBER_SEPARATOR = "#"


@dataclass(frozen=True)
class TarListing:
    """What a shard holds: its regular files' (data offset, size) by member name; what stops
    it being read to its end (``damage``: truncated, a damaged header), the members before
    which stay; and the members that are not regular files (links, devices), with what each
    is."""

    members: dict[str, tuple[int, int]]
    damage: str | None = None
    unsupported: tuple[tuple[str, str], ...] = ()


def member_offsets(shard: str) -> dict[str, tuple[int, int]]:
    """Member name -> (data offset, size) for every whole regular file in a tar shard.

    Raises:
        DecodeError: the shard is missing or not a tar archive.
    """
    return list_shard(shard).members


def list_shard(shard: str) -> TarListing:
    """The shard's :class:`TarListing`.

    Raises:
        DecodeError: the shard is missing or not a tar archive.
    """
    try:
        info = os.stat(shard)
    except FileNotFoundError:
        raise DecodeError("read", "tar shard is missing") from None
    except OSError as error:
        raise DecodeError("read", f"not a readable tar shard: {error.strerror}") from None
    require_regular_file(info.st_mode)
    # Listed once per version of the file: a shard rewritten in place is listed afresh.
    return _listing(shard, info.st_size, info.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _listing(shard: str, size: int, mtime_ns: int) -> TarListing:
    members: dict[str, tuple[int, int]] = {}
    unsupported: list[tuple[str, str]] = []
    damage = None
    try:
        with tarfile.open(shard, mode="r:") as archive:
            # tarfile ends its iteration quietly at a truncated or damaged header after the
            # first (a cut download read as a shorter shard): step through it, then look at
            # what stopped it.
            while True:
                try:
                    member = archive.next()
                except tarfile.TarError as error:
                    damage = (  # the previous member's data runs past the end of the file
                        f"tar shard is truncated (it ends at byte {size})"
                        if "unexpected end of data" in str(error)
                        else f"tar shard is damaged ({error})"
                    )
                    break
                if member is None:
                    damage = _end_of(shard, archive.offset, size)
                    break
                if member.isfile():
                    members[member.name] = (member.offset_data, member.size)
                elif not member.isdir():
                    unsupported.append((member.name, _not_a_file(member)))
    except FileNotFoundError:
        raise DecodeError("read", "tar shard is missing") from None
    except (tarfile.TarError, OSError) as error:
        raise DecodeError("read", f"not a readable tar shard: {error}") from None
    whole = {name: at for name, at in members.items() if at[0] + at[1] <= size}
    return TarListing(whole, damage, tuple(unsupported))


def _end_of(shard: str, offset: int, size: int) -> str | None:
    """Why iteration stopped at ``offset``: None at the end-of-archive marker (a zero block)."""
    with open(shard, "rb") as handle:
        handle.seek(offset)
        block = handle.read(tarfile.BLOCKSIZE)
    if len(block) < tarfile.BLOCKSIZE:
        return f"tar shard is truncated (no end-of-archive marker; it ends at byte {size})"
    if block.count(0) != len(block):
        return f"tar shard is damaged (an unreadable member header at byte {offset})"
    return None


def _not_a_file(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"a symbolic link (to {member.linkname}), not a file"
    if member.islnk():
        return f"a hard link (to {member.linkname}), not a file"
    return "a device, FIFO or other special member, not a file"


def sample_key(member: str) -> tuple[str, str]:
    """``dir/000123.seg.jpg`` -> (``dir/000123``, ``seg.jpg``): WebDataset's key and extension."""
    folder, _, name = member.rpartition("/")
    stem, _, extension = name.partition(".")
    return (f"{folder}/{stem}" if folder else stem), extension.lower()


def group_samples(members: Iterable[str]) -> dict[str, dict[str, str]]:
    """Member names by sample: key -> extension -> member name, in the shard's order."""
    samples: dict[str, dict[str, str]] = {}
    for name in members:
        key, extension = sample_key(name)
        samples.setdefault(key, {})[extension] = name
    return samples


def image_member(parts: Mapping[str, str]) -> str | None:
    """A sample's image member (by IMAGE_EXTENSIONS order when it has several), or None."""
    return next((parts[ext] for ext in IMAGE_EXTENSIONS if ext in parts), None)


def member_uri(shard: Path | str, member: str) -> str:
    """``SHARD.tar#MEMBER``, as text (see :mod:`clipkit.inputs.filenames`)."""
    return as_text(f"{shard}{MEMBER_SEPARATOR}{member}")


def split_member_uri(uri: str) -> tuple[str, str] | None:
    """(shard, member) for a ``SHARD.tar#MEMBER`` uri, else None."""
    shard, separator, member = uri.partition(TAR_SUFFIX + MEMBER_SEPARATOR)
    if not separator or not member:
        return None
    return shard + TAR_SUFFIX, member


def read_member(uri: str) -> bytes:
    """The bytes of one shard member named by its ``SHARD.tar#MEMBER`` uri."""
    parts = split_member_uri(os_path(uri))
    if parts is None:
        raise DecodeError("read", "not a tar member address")
    shard, member = parts
    location = member_offsets(shard).get(member)
    if location is None:
        raise DecodeError("read", f"no member {member} in {Path(shard).name}")
    offset, size = location
    with open(shard, "rb") as handle:
        handle.seek(offset)
        data = handle.read(size)
    if len(data) != size:
        raise DecodeError("read", "tar shard is truncated")
    return data
