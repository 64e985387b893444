"""Finding what to embed: folders, single files, line files, tables and WebDataset ``.tar``
shards become :class:`Item`s.

Discovery only lists; reading and decoding happen later in worker processes. The list is
sorted by uri so that every run (and every rank of a distributed run) sees the same order.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipkit.config import TABLE_SUFFIXES
from clipkit.errors import InputError
from clipkit.inputs.decode import (
    IMAGE_SUFFIXES,
    TEXT_SUFFIXES,
    UNSUPPORTED_IMAGE_SUFFIXES,
    DecodeError,
    decode_text,
    unreadable_folder,
    unsupported_image,
)
from clipkit.inputs.filenames import UriFrame, as_text, table_path
from clipkit.inputs.tarshards import (
    TAR_SUFFIX,
    group_samples,
    image_member,
    list_shard,
    member_uri,
    read_member,
)

if TYPE_CHECKING:
    from clipkit.store import InputTable

IMAGE_COLUMNS = ("filepath", "image", "image_path", "path", "file", "filename")
TEXT_COLUMNS = ("caption", "text", "title", "description")


class Kind(str, Enum):
    AUTO = "auto"
    IMAGE = "image"
    TEXT = "text"


@dataclass(frozen=True, slots=True)  # slots: a million items hold 100 MB less
class Item:
    """One thing to embed: an image file, a text file, or a text given inline."""

    uri: str
    kind: str  # "image" | "text"
    path: str | None = None  # file to read; None for inline text
    text: str | None = None  # inline text (a line of a file, a table cell)
    meta: Mapping[str, Any] | None = field(default=None, compare=False, hash=False)  # table cells


@dataclass(frozen=True)
class SourceOptions:
    kind: Kind = Kind.AUTO
    lines: bool = False
    include_hidden: bool = False
    image_column: str | None = None
    text_column: str | None = None
    frame: UriFrame | None = None  # uris relative to an embeddings folder's base (embed)

    def uri(self, path: str | os.PathLike[str]) -> str:
        """The uri of a path found from the sources as given: as typed, or in ``frame``."""
        return self.frame.uri(path) if self.frame is not None else as_text(path)

    def names(self, path: str | os.PathLike[str]) -> tuple[str, str]:
        """(uri, the path to read) of a file: one string object when they are equal, as they
        are for a run in its folder's base (a million items then hold one copy of each)."""
        uri, readable = self.uri(path), as_text(path)
        return uri, (uri if readable == uri else readable)


@dataclass
class Discovery:
    """The items found, the files passed over because they are not inputs, and the inputs
    that could not be listed (a damaged ``.tar`` shard in a folder: uri, stage, reason)."""

    items: list[Item]
    ignored: int = 0
    failures: list[tuple[str, str, str]] = field(default_factory=list)


def discover(sources: Sequence[str | Path], options: SourceOptions) -> Discovery:
    """List the items that ``sources`` name.

    Raises:
        InputError: a source does not exist, or nothing embeddable was found.
    """
    if not sources:
        raise InputError("No SOURCE given.", "Name one or more folders, files or tables.")
    found = Discovery(items=[])
    for source in sources:
        path = Path(source).expanduser()
        if not path.exists() and not path.is_symlink():
            raise InputError(f"Source {source} does not exist.", "Check the path.")
        before = (len(found.items), len(found.failures))
        if path.is_dir():
            _walk(path, options, found)
        elif path.suffix.lower() == TAR_SUFFIX:
            _tar_items(path, options, found, explicit=True)
        elif path.suffix.lower() in TABLE_SUFFIXES:
            found.items.extend(_table_items(path, options))
        else:
            _file_items(path, options, found, explicit=True)
        if (len(found.items), len(found.failures)) == before:  # listed failures are reported
            raise InputError(
                f"Source {source} holds nothing to embed"
                + (f" of kind {options.kind.value}." if options.kind is not Kind.AUTO else "."),
                "Images: " + ", ".join(sorted(IMAGE_SUFFIXES)) + "; texts: .txt files (use "
                "--lines for one text per line); tables: .csv, .tsv, .jsonl, .parquet.",
            )
    found.items = _sorted_unique(found.items)
    return found


def _sorted_unique(items: list[Item]) -> list[Item]:
    """Items by (uri, kind), the last of any repeated pair kept; sorted in place, in two
    stable passes on existing strings, so that a million items need no million key tuples."""
    items.sort(key=attrgetter("kind"))
    items.sort(key=attrgetter("uri"))
    last = len(items) - 1
    return [
        item
        for index, item in enumerate(items)
        if index == last or (items[index + 1].uri, items[index + 1].kind) != (item.uri, item.kind)
    ]


def _wanted(kind: str, options: SourceOptions) -> bool:
    return options.kind is Kind.AUTO or options.kind.value == kind


def _walk(root: Path, options: SourceOptions, found: Discovery) -> None:
    # Symlinked folders are not followed (no cycles); symlinked files are, and a broken one
    # becomes a read failure rather than vanishing silently.
    def unreadable(error: OSError) -> None:
        found.failures.append((options.uri(error.filename), "read", unreadable_folder(error)))

    for folder, subfolders, files in os.walk(root, onerror=unreadable):
        if not options.include_hidden:
            subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        subfolders.sort()
        for name in sorted(files):
            if name.startswith(".") and not options.include_hidden:
                continue
            _file_items(Path(folder) / name, options, found, explicit=False)


def _file_items(path: Path, options: SourceOptions, found: Discovery, *, explicit: bool) -> None:
    suffix = path.suffix.lower()
    uri, readable = options.names(path)
    if suffix == TAR_SUFFIX:
        _tar_items(path, options, found, explicit=explicit)
    elif suffix in IMAGE_SUFFIXES:
        if _wanted("image", options):
            found.items.append(Item(uri=uri, kind="image", path=readable))
    elif suffix in TEXT_SUFFIXES:
        if not _wanted("text", options):
            return
        if options.lines and explicit:
            found.items.extend(_line_items(path, uri))
        else:
            found.items.append(Item(uri=uri, kind="text", path=readable))
    elif suffix in UNSUPPORTED_IMAGE_SUFFIXES:
        if explicit:
            raise InputError(f"{path}: {unsupported_image(suffix)}.", "Convert it first.")
        if _wanted("image", options):
            found.failures.append((uri, "read", unsupported_image(suffix)))
    elif explicit:
        raise InputError(
            f"{path} is neither an image, a .txt file nor a table.",
            "Supported: "
            + ", ".join(sorted(IMAGE_SUFFIXES | TEXT_SUFFIXES | TABLE_SUFFIXES | {TAR_SUFFIX})),
        )
    else:
        found.ignored += 1


def _tar_items(path: Path, options: SourceOptions, found: Discovery, *, explicit: bool) -> None:
    """The samples of a WebDataset shard: its image member and its ``.txt`` member (both
    optional), with the sample's ``.json`` member and each one's partner passed through."""
    try:
        listing = list_shard(str(path))
    except DecodeError as error:  # named or found, a bad shard is listed: the others go on
        found.failures.append((options.uri(path), "read", error.reason))
        return
    shard_uri, shard = options.names(path)
    # A damaged shard is listed as a failure; the samples before the damage are read.
    if listing.damage is not None:
        found.failures.append((options.uri(path), "read", listing.damage))
    for member, what in listing.unsupported:
        found.failures.append((member_uri(shard_uri, member), "read", what))
    for parts in group_samples(listing.members).values():
        image = image_member(parts)
        caption, record = parts.get("txt"), parts.get("json")
        if image is None and caption is None:
            found.ignored += 1
            continue
        if image is not None and _wanted("image", options):
            meta = SampleMeta(shard, record, caption, None)
            uri = member_uri(shard_uri, image)
            readable = uri if shard is shard_uri else member_uri(shard, image)
            found.items.append(Item(uri=uri, kind="image", path=readable, meta=meta or None))
        if caption is not None and _wanted("text", options):
            meta = SampleMeta(shard, record, None, image, shard_uri)
            uri = member_uri(shard_uri, caption)
            readable = uri if shard is shard_uri else member_uri(shard, caption)
            found.items.append(Item(uri=uri, kind="text", path=readable, meta=meta or None))


class SampleMeta(Mapping[str, Any]):
    """Pass-through values of one WebDataset sample, read from its shard when asked for:
    ``json`` (the raw ``.json`` member, e.g. img2dataset's url and size), and an image's
    ``caption`` (its ``.txt`` member) or a caption's ``image`` (its image member's uri, in the
    shard's uri ``shard_uri``)."""

    __slots__ = ("_shard", "_record", "_caption", "_image", "_shard_uri")

    def __init__(
        self,
        shard: str,
        record: str | None,
        caption: str | None,
        image: str | None,
        shard_uri: str | None = None,
    ) -> None:
        self._shard, self._record, self._caption, self._image = shard, record, caption, image
        self._shard_uri = shard_uri or shard

    def __getitem__(self, name: str) -> Any:
        member = {"json": self._record, "caption": self._caption}.get(name)
        if name == "image" and self._image is not None:
            return member_uri(self._shard_uri, self._image)
        if member is None:
            raise KeyError(name)
        try:
            return decode_text(read_member(member_uri(self._shard, member)))[0]
        except DecodeError:  # gone or empty since discovery: no value, never a failed shard
            return None

    def __iter__(self) -> Iterator[str]:
        names = (("json", self._record), ("caption", self._caption), ("image", self._image))
        return iter([name for name, member in names if member is not None])

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _line_items(path: Path, uri: str) -> Iterable[Item]:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise InputError(f"Cannot read {path}: {error.strerror}.", "Check the file.") from None
    for number, raw in enumerate(data.splitlines(), start=1):
        try:
            text, _ = decode_text(raw)
        except DecodeError:
            continue  # blank lines separate texts; they are not inputs
        yield Item(uri=f"{uri}#L{number}", kind="text", text=text)


class TableRow(Mapping[str, Any]):
    """The pass-through cells of one table row, read from the table when asked for.

    A dict per row cost a million-row table about 1 GB of Python objects; a view is one small
    object that shares the table and the tuple of column names. The cell of ``image_column``
    (a caption row's image) reads as the image row's uri (``image_uri`` of the cell as
    :func:`~clipkit.inputs.filenames.table_path` resolves it), not as written in the table, so the
    two join.
    """

    __slots__ = ("_table", "_names", "_row", "_image_column", "_image_uri")

    def __init__(
        self,
        table: InputTable,
        names: tuple[str, ...],
        row: int,
        image_column: str | None = None,
        image_uri: Callable[[str], str] = as_text,
    ) -> None:
        self._table, self._names, self._row = table, names, row
        self._image_column, self._image_uri = image_column, image_uri

    def __getitem__(self, name: str) -> Any:
        if name not in self._names:
            raise KeyError(name)
        value = self._table.cell(name, self._row)
        if name == self._image_column and value not in (None, ""):
            return self._image_uri(table_path(value, self._table.path))
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def _table_items(path: Path, options: SourceOptions) -> list[Item]:
    from clipkit.store import read_table

    table = read_table(path)
    columns = table.columns
    image_column = find_column(columns, options.image_column, IMAGE_COLUMNS, "--image-column", path)
    text_column = find_column(columns, options.text_column, TEXT_COLUMNS, "--text-column", path)
    if image_column is None and text_column is None:
        raise InputError(
            f"Table {path} has no image or text column (columns: {', '.join(columns) or 'none'}).",
            "Name them with --image-column and/or --text-column.",
        )
    passed = tuple(name for name in columns if name not in (image_column, text_column))
    # An image row also passes on its caption, and a caption its image path, as
    # clip-retrieval's metadata does: a search hit then shows its partner.
    image_meta = passed + ((text_column,) if text_column else ())
    text_meta = passed + ((image_column,) if image_column else ())
    images = table.paths(image_column) if image_column and _wanted("image", options) else None
    texts = table.texts(text_column) if text_column and _wanted("text", options) else None
    items, table_uri = [], options.uri(path)
    for number in range(table.rows):
        if images is not None and images[number] not in (None, ""):
            uri, readable = options.names(table_path(images[number], path))
            meta = TableRow(table, image_meta, number) if image_meta else None
            items.append(Item(uri=uri, kind="image", path=readable, meta=meta))
        if texts is not None:
            text = texts[number]
            meta = (
                TableRow(table, text_meta, number, image_column, options.uri) if text_meta else None
            )
            items.append(
                Item(uri=f"{table_uri}#row={number}", kind="text", text=str(text or ""), meta=meta)
            )
    return items


def find_column(
    columns: list[str], chosen: str | None, defaults: Sequence[str], flag: str, path: Path
) -> str | None:
    if chosen is not None:
        if chosen not in columns:
            raise InputError(
                f"Table {path} has no column {chosen!r} (columns: {', '.join(columns)}).",
                f"Pass one of its columns to {flag}.",
            )
        return chosen
    lowered = {name.lower(): name for name in columns}
    return next((lowered[name] for name in defaults if name in lowered), None)
