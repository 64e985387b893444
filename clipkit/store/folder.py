"""An embeddings folder as a whole: what it holds (for resuming), its side tables and pruning.

Beside the shards, ``_failures.parquet`` (``uri``, ``stage``, ``error``: the inputs the latest
run skipped), ``_aliases.parquet`` (``id``, ``uri``: further paths whose content was identical
to an embedded row) and ``_files.parquet`` (the stat cache). The leading underscore keeps them
out of ``pyarrow.dataset`` discovery, so the folder reads as one dataset.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from clipkit.errors import InputError
from clipkit.infra.atomic import atomic_path
from clipkit.store import parquet as parquet_io
from clipkit.store.shards import (
    ROW_GROUP_ROWS,
    SHARD_PATTERN,
    ModelStamp,
    VectorBlock,
    _open_shard,
    _unreadable,
    list_shards,
    snapshot,
)

FAILURES_FILE = "_failures.parquet"
ALIASES_FILE = "_aliases.parquet"
FILES_FILE = "_files.parquet"  # a cache: uri, size, mtime_ns, id of the files embed has read
FileStat = tuple[int, int, str]  # (size, mtime_ns, content id)


@dataclass
class ExistingEmbeddings:
    """What an embeddings folder already holds, for resuming and incremental runs."""

    stamp: ModelStamp | None = None
    ids: set[str] = field(default_factory=set)
    uris: dict[str, str] = field(default_factory=dict)  # uri -> content id (rows, then aliases)
    shard_numbers: list[int] = field(default_factory=list)
    rows: int = 0


def read_existing(out_dir: Path) -> ExistingEmbeddings:
    """Ids, uris and the model stamp of the shards in ``out_dir`` (reads only small columns).

    Raises:
        InputError: a shard is unreadable or shards disagree about the model.
    """
    existing = ExistingEmbeddings()
    for shard in snapshot(out_dir):
        parquet, existing.stamp = _open_shard(shard, existing.stamp)
        try:
            columns = parquet.read(columns=["id", "uri"])
        except (OSError, pa.ArrowException) as error:
            raise _unreadable(shard.path, error) from None
        ids = columns.column("id").to_pylist()
        existing.ids.update(ids)
        existing.uris.update(zip(columns.column("uri").to_pylist(), ids, strict=True))
        number = SHARD_PATTERN.match(shard.path.name)
        assert number is not None  # list_shards lists only names that match
        existing.shard_numbers.append(int(number.group(1)))
        existing.rows += columns.num_rows
    existing.uris.update(read_aliases(out_dir))
    return existing


@dataclass(frozen=True)
class DuplicateGroup:
    """Identical content found under several uris: the row's uri first, then its aliases."""

    id: str
    kind: str
    uris: tuple[str, ...]


def duplicate_groups(out_dir: Path) -> list[DuplicateGroup]:
    """Every content of the folder that has more than one uri, largest groups first.

    Raises:
        InputError: a shard or the aliases table is unreadable.
    """
    aliases: dict[str, list[str]] = {}
    for uri, item_id in read_aliases(out_dir):
        aliases.setdefault(item_id, []).append(uri)
    groups = []
    for shard in snapshot(out_dir):
        parquet, _ = _open_shard(shard, None)
        try:
            columns = parquet.read(columns=["id", "uri", "kind"]).to_pydict()
        except (OSError, pa.ArrowException) as error:
            raise _unreadable(shard.path, error) from None
        for item_id, uri, kind in zip(columns["id"], columns["uri"], columns["kind"], strict=True):
            others = sorted(set(aliases.get(item_id, ())) - {uri})
            if others:
                groups.append(DuplicateGroup(item_id, kind, (uri, *others)))
    return sorted(groups, key=lambda group: (-len(group.uris), group.uris))


def read_file_stats(out_dir: Path) -> dict[str, FileStat]:
    """uri -> (size, mtime_ns, id) of the files that earlier runs read; a missing or damaged
    cache is an empty one (the files are then read and hashed again)."""
    path = out_dir / FILES_FILE
    try:
        table = parquet_io.read(path) if path.is_file() else None
    except (OSError, pa.ArrowException):
        table = None
    if table is None or set(table.column_names) < {"uri", "size", "mtime_ns", "id"}:
        return {}
    columns = (table.column(name).to_pylist() for name in ("uri", "size", "mtime_ns", "id"))
    return {uri: (size, mtime, item_id) for uri, size, mtime, item_id in zip(*columns, strict=True)}


def write_file_stats(out_dir: Path, stats: dict[str, FileStat]) -> None:
    uris = list(stats)
    table = pa.table(
        {
            "uri": pa.array(uris, pa.string()),
            "size": pa.array([stats[uri][0] for uri in uris], pa.int64()),
            "mtime_ns": pa.array([stats[uri][1] for uri in uris], pa.int64()),
            "id": pa.array([stats[uri][2] for uri in uris], pa.string()),
        }
    )
    with atomic_path(out_dir / FILES_FILE) as tmp:
        parquet_io.write(table, tmp)


def write_failures(out_dir: Path, failures: Sequence[tuple[str, str, str]]) -> None:
    """Replace the folder's failures table (an embeddings or a run folder's: one name) with this
    run's skipped inputs (uri, stage, error)."""
    uris, stages, errors = (
        (list(column) for column in zip(*failures, strict=True)) if failures else ([], [], [])
    )
    table = pa.table(
        {
            "uri": pa.array(uris, pa.string()),
            "stage": pa.array(stages, pa.string()),
            "error": pa.array(errors, pa.string()),
        }
    )
    with atomic_path(out_dir / FAILURES_FILE) as tmp:
        parquet_io.write(table, tmp)


def add_aliases(out_dir: Path, aliases: Sequence[tuple[str, str]]) -> None:
    """Add (id, uri) pairs to ``_aliases.parquet``; a uri listed before takes its new id."""
    known = dict(read_aliases(out_dir))
    known.update((uri, item_id) for item_id, uri in aliases)
    _write_aliases(out_dir, known)


def read_aliases(out_dir: Path) -> list[tuple[str, str]]:
    """(uri, id) pairs of ``_aliases.parquet``: further paths of content that has a row.

    Raises:
        InputError: the file is damaged (named, with how to rebuild it).
    """
    path = out_dir / ALIASES_FILE
    if not path.is_file():
        return []
    try:
        old = parquet_io.read(path, columns=["uri", "id"])
    except (OSError, pa.ArrowException, KeyError) as error:
        raise InputError(
            f"{path} is unreadable: {str(error).splitlines()[0]}.",
            "Delete it and run the same `clipkit embed` command again: it lists the "
            "duplicates anew.",
        ) from None
    return list(zip(old.column("uri").to_pylist(), old.column("id").to_pylist(), strict=True))


def _write_aliases(out_dir: Path, id_of: dict[str, str]) -> None:
    table = pa.table(
        {
            "id": pa.array(list(id_of.values()), pa.string()),
            "uri": pa.array(list(id_of.keys()), pa.string()),
        }
    )
    with atomic_path(out_dir / ALIASES_FILE) as tmp:
        parquet_io.write(table, tmp)


@dataclass(frozen=True)
class Pruned:
    """What :func:`prune` changed."""

    rows_removed: int
    rows_moved: int  # rows whose uri now names another path that holds their content


def prune(out_dir: Path, current: dict[str, str], kinds: Collection[str]) -> Pruned:
    """Make the rows of ``kinds`` match ``current``, the uri -> content id of every input found.

    A row whose content no input holds any more is dropped; a row whose uri no longer holds its
    content names another uri that does; the aliases of those kinds are rebuilt from
    ``current``. Rows of other kinds, and their aliases, are left alone. Each shard is rewritten
    atomically (or deleted when emptied): a crash between two leaves a folder that the next
    prune finishes.
    """
    uris_of: dict[str, list[str]] = {}
    for uri, item_id in sorted(current.items()):
        uris_of.setdefault(item_id, []).append(uri)
    primary: dict[str, str] = {}  # content id -> the uri its row keeps
    other_kinds: set[str] = set()  # ids of rows left alone
    removed = moved = 0
    for path in list_shards(out_dir):
        names = ("id", "uri", "kind")
        small = parquet_io.read(path, columns=list(names))  # the vectors only if it changes
        ids, old_uris, row_kinds = (small.column(name).to_pylist() for name in names)
        keep, uris = [], []
        for item_id, uri, kind in zip(ids, old_uris, row_kinds, strict=True):
            if kind not in kinds:
                other_kinds.add(item_id)
            elif item_id not in uris_of:
                removed += 1
            elif current.get(uri) != item_id:
                uri = uris_of[item_id][0]
                moved += 1
            keep.append(kind not in kinds or item_id in uris_of)
            uris.append(uri)
            if keep[-1] and kind in kinds:
                primary[item_id] = uri
        if not all(keep) or uris != old_uris:
            _rewrite_shard(path, keep, uris)
    aliases = {uri: item_id for uri, item_id in read_aliases(out_dir) if item_id in other_kinds}
    for item_id, uris in uris_of.items():
        if item_id in primary:
            aliases.update((uri, item_id) for uri in uris if uri != primary[item_id])
    _write_aliases(out_dir, aliases)
    return Pruned(rows_removed=removed, rows_moved=moved)


def _rewrite_shard(path: Path, keep: list[bool], uris: list[str]) -> None:
    """Write a shard back (atomically) with only the rows ``keep`` marks and ``uris`` as its
    uri column; delete it when no row is kept."""
    if not any(keep):
        path.unlink()
        return
    table = parquet_io.read(path)
    uri_column = table.schema.get_field_index("uri")
    table = table.set_column(uri_column, "uri", pa.array(uris, pa.string()))
    with atomic_path(path) as tmp:
        parquet_io.write(
            table.filter(pa.array(keep)), tmp, compression="zstd", row_group_size=ROW_GROUP_ROWS
        )


def fill_meta(out_dir: Path, values: Mapping[str, Mapping[str, str]]) -> int:
    """Give rows their pass-through values where they have none: ``values`` maps a content id
    to column -> value (as stored: text). A value a row already holds is kept; a column a shard
    lacks is added (empty for its other rows). Each shard that changes is rewritten atomically.

    Returns:
        The number of rows that gained a value.
    """
    filled = 0
    for path in list_shards(out_dir):
        ids = parquet_io.read(path, columns=["id"]).column("id").to_pylist()
        hits = [(n, values[item_id]) for n, item_id in enumerate(ids) if item_id in values]
        if not hits:
            continue
        table = parquet_io.read(path)
        gained: set[int] = set()
        for name in sorted({name for _, given in hits for name in given}):
            index = table.schema.get_field_index(name)
            column = table.column(index).to_pylist() if index >= 0 else [None] * len(ids)
            changed = False
            for n, given in hits:
                if column[n] is None and given.get(name) is not None:
                    column[n] = given[name]
                    gained.add(n)
                    changed = True
            if not changed:
                continue
            array = pa.array(column, pa.string())
            if index >= 0:
                table = table.set_column(index, name, array)
            else:
                table = table.append_column(name, array)
        if gained:
            with atomic_path(path) as tmp:
                parquet_io.write(table, tmp, compression="zstd", row_group_size=ROW_GROUP_ROWS)
            filled += len(gained)
    return filled


def with_aliases(rows: VectorBlock, folder: Path) -> VectorBlock:
    """``rows`` plus a row for each further path of their content that ``_aliases.parquet``
    lists (same id, kind, text and vector), all in uri order, as discovery orders a source.

    A folder of copies then reads like the source it was embedded from: an audit or zero-shot
    run over the embeddings covers every file, not one file per distinct content.
    """
    number = {item_id: n for n, item_id in enumerate(rows.ids)}
    seen = set(rows.uris)
    order = [(uri, n) for n, uri in enumerate(rows.uris)]
    order += [
        (uri, number[item_id])
        for uri, item_id in read_aliases(folder)
        if item_id in number and uri not in seen
    ]
    order.sort()
    picked = [n for _, n in order]
    return VectorBlock(
        ids=[rows.ids[n] for n in picked],
        uris=[uri for uri, _ in order],
        kinds=[rows.kinds[n] for n in picked],
        texts=[rows.texts[n] for n in picked],
        vectors=rows.vectors[picked] if len(rows.vectors) else rows.vectors,
        meta={name: [values[n] for n in picked] for name, values in rows.meta.items()},
    )
