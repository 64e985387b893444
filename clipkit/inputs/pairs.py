"""Image-caption pair datasets, as ``clipkit train`` and ``clipkit audit`` read them.

Three layouts: a folder of images, each with a same-stem ``.txt`` sidecar (one caption per
non-empty line, several allowed); a CSV/TSV/JSONL/Parquet table with an image-path column
(relative to the table's folder) and a caption column, where rows naming the same image add
captions to it; or WebDataset ``.tar`` shards (a shard, or a folder of them) whose samples hold
an image member and a ``txt`` member. Pairs that cannot be used are skipped and listed, never
silently dropped; a table without the needed columns is an error before any work starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from clipkit.config import TABLE_SUFFIXES
from clipkit.errors import InputError
from clipkit.inputs.decode import (
    IMAGE_SUFFIXES,
    UNSUPPORTED_IMAGE_SUFFIXES,
    DecodeError,
    decode_text,
    unreadable_folder,
    unsupported_image,
)
from clipkit.inputs.filenames import as_text, table_path
from clipkit.inputs.files import read_bytes
from clipkit.inputs.sources import IMAGE_COLUMNS, TEXT_COLUMNS, find_column
from clipkit.inputs.tarshards import (
    TAR_SUFFIX,
    group_samples,
    image_member,
    list_shard,
    member_uri,
    read_member,
)


@dataclass(frozen=True)
class Pair:
    """One image and its captions (at least one, in the order the source gives them)."""

    image: str
    captions: tuple[str, ...]


@dataclass(frozen=True)
class PairSet:
    """The usable pairs of a source, and (uri, stage, reason) for every pair skipped."""

    source: str
    pairs: tuple[Pair, ...]
    skipped: tuple[tuple[str, str, str], ...]


def read_pairs(
    source: str | Path,
    *,
    image_column: str | None = None,
    text_column: str | None = None,
    include_hidden: bool = False,
) -> PairSet:
    """Read the pairs a folder or table holds (image files are not opened here).

    Raises:
        InputError: the source does not exist, is of an unknown kind, or a table lacks the
            image or caption column.
    """
    path = Path(source).expanduser()
    shards = _tar_shards(path)
    if shards:
        pairs, skipped = _shard_pairs(shards)
    elif path.is_dir():
        pairs, skipped = _folder_pairs(path, include_hidden)
    elif path.is_file() and path.suffix.lower() in TABLE_SUFFIXES:
        pairs, skipped = _table_pairs(path, image_column, text_column)
    else:
        _source_error(path)
    return PairSet(as_text(path), tuple(pairs), tuple(skipped))


def _folder_pairs(root: Path, include_hidden: bool):
    pairs, skipped = [], []

    def unreadable(error: OSError) -> None:
        skipped.append((as_text(error.filename), "read", unreadable_folder(error)))

    for folder, subfolders, files in os.walk(root, onerror=unreadable):
        if not include_hidden:
            subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        subfolders.sort()
        for name in sorted(files):
            suffix = Path(name).suffix.lower()
            if name.startswith(".") and not include_hidden:
                continue
            if suffix in UNSUPPORTED_IMAGE_SUFFIXES:
                skipped.append((as_text(Path(folder) / name), "read", unsupported_image(suffix)))
            if suffix not in IMAGE_SUFFIXES:
                continue
            image = Path(folder) / name
            uri, sidecar = as_text(image), image.with_suffix(".txt")
            shown = as_text(sidecar.name)
            if not sidecar.exists():
                skipped.append((uri, "caption", f"no caption file {shown}"))
                continue
            try:
                captions = _captions(read_bytes(str(sidecar)))
            except DecodeError as error:
                skipped.append((uri, "caption", f"{shown}: {error.reason}"))
                continue
            if not captions:
                skipped.append((uri, "caption", f"{shown} holds no caption"))
            else:
                pairs.append(Pair(uri, captions))
    return pairs, skipped


def _captions(data: bytes) -> tuple[str, ...]:
    captions = []
    for line in data.splitlines():
        try:
            captions.append(decode_text(line)[0])
        except DecodeError:
            continue  # blank lines separate captions
    return tuple(captions)


def check_pair_source(
    source: str | Path, *, image_column: str | None = None, text_column: str | None = None
) -> None:
    """What :func:`read_pairs` would refuse at once, found by looking at no more than a path
    and a table's header: a missing source, an unknown kind, a missing column.

    Commands call it before loading a model, so such a mistake is reported in a blink.

    Raises:
        InputError: as :func:`read_pairs` for these mistakes.
    """
    path = Path(source).expanduser()
    if path.is_file() and path.suffix.lower() in TABLE_SUFFIXES:
        from clipkit.store import table_columns

        pair_columns(table_columns(path), image_column, text_column, path)
    elif not (path.is_dir() or _tar_shards(path)):
        _source_error(path)


def _source_error(path: Path) -> NoReturn:
    if path.exists():
        raise InputError(
            f"{path} is neither a folder of captioned images nor a table.",
            "Use a folder with same-name .txt captions beside each image, a "
            ".csv/.tsv/.jsonl/.parquet table with image and caption columns, or WebDataset "
            ".tar shards.",
        )
    raise InputError(f"Pair source {path} does not exist.", "Check the path.")


def pair_columns(
    columns: list[str], image_column: str | None, text_column: str | None, path: Path
) -> tuple[str, str]:
    """The image and caption columns of a table: those named, else the usual names."""
    image_key = find_column(columns, image_column, IMAGE_COLUMNS, "--image-column", path)
    text_key = find_column(columns, text_column, TEXT_COLUMNS, "--text-column", path)
    missing = [name for name, key in (("image", image_key), ("caption", text_key)) if not key]
    if missing or image_key is None or text_key is None:
        raise InputError(
            f"Table {path} has no {' or '.join(missing)} column "
            f"(columns: {', '.join(columns) or 'none'}).",
            "Name them with --image-column and --text-column.",
        )
    return image_key, text_key


def _table_pairs(path: Path, image_column: str | None, text_column: str | None):
    from clipkit.store import read_table

    table = read_table(path)
    image_key, text_key = pair_columns(table.columns, image_column, text_column, path)
    grouped: dict[str, list[str]] = {}
    skipped = []
    rows = zip(table.paths(image_key), table.texts(text_key), strict=True)
    for number, (image, caption) in enumerate(rows):
        if image in (None, ""):
            skipped.append((f"{path}#row={number}", "caption", "no image path"))
            continue
        uri = table_path(image, path)
        text = "" if caption is None else str(caption).strip()
        if not text:
            skipped.append((uri, "caption", f"empty caption in row {number}"))
            continue
        grouped.setdefault(uri, []).append(text)
    return [Pair(uri, tuple(captions)) for uri, captions in grouped.items()], skipped


def _tar_shards(path: Path) -> list[Path]:
    """The shards a path names: a .tar file, or a folder holding .tar files and no images."""
    if path.is_file() and path.suffix.lower() == TAR_SUFFIX:
        return [path]
    if not path.is_dir():
        return []
    shards = sorted(p for p in path.iterdir() if p.suffix.lower() == TAR_SUFFIX and p.is_file())
    has_images = any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir())
    return [] if has_images else shards


def _shard_pairs(shards: list[Path]):
    pairs, skipped = [], []
    for shard in shards:
        try:
            listing = list_shard(str(shard))
        except DecodeError as error:
            skipped.append((as_text(shard), "read", error.reason))
            continue
        if listing.damage is not None:  # the samples before the damage are kept
            skipped.append((as_text(shard), "read", listing.damage))
        skipped.extend((member_uri(shard, m), "read", what) for m, what in listing.unsupported)
        for key, parts in group_samples(listing.members).items():
            image = image_member(parts)
            uri = member_uri(shard, image or key)
            if image is None:
                skipped.append((uri, "read", "sample has no image member"))
            elif "txt" not in parts:
                skipped.append((uri, "caption", "sample has no txt member"))
            else:
                captions = _captions(read_member(member_uri(shard, parts["txt"])))
                if captions:
                    pairs.append(Pair(uri, captions))
                else:
                    skipped.append((uri, "caption", "empty txt member"))
    return pairs, skipped
