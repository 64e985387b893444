"""Parquet storage: embedding shards, failure and alias tables, and reading input tables.

The only module that imports pyarrow. An embeddings folder holds ``part-NNNNN.parquet`` shards
(columns ``id``, ``uri``, ``kind``, ``text``, ``embedding`` and pass-through metadata, schema
metadata ``clipkit.*``), ``_failures.parquet`` (``uri``, ``stage``, ``error``: the inputs the
latest run skipped) and ``_aliases.parquet`` (``id``, ``uri``: further paths whose content was
identical to an embedded row). The leading underscore keeps the side tables out of
``pyarrow.dataset`` discovery, so the folder reads as one dataset. Every file is written
atomically, so a crash loses no shard.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from clipkit import __version__
from clipkit.atomic import atomic_path
from clipkit.errors import InputError

SHARD_PATTERN = re.compile(r"^part-(\d{5,})\.parquet$")
FAILURES_FILE = "_failures.parquet"
ALIASES_FILE = "_aliases.parquet"
FILES_FILE = "_files.parquet"  # a cache: uri, size, mtime_ns, id of the files embed has read
TABLE_SUFFIXES = frozenset({".csv", ".tsv", ".jsonl", ".parquet"})
CORE_COLUMNS = ("id", "uri", "kind", "text", "embedding")


@dataclass(frozen=True)
class ModelStamp:
    """The identity of the model that made a set of embeddings."""

    spec: str
    fingerprint: str
    dim: int


@dataclass
class ExistingEmbeddings:
    """What an embeddings folder already holds, for resuming and incremental runs."""

    stamp: ModelStamp | None = None
    ids: set[str] = field(default_factory=set)
    uris: dict[str, str] = field(default_factory=dict)  # uri -> content id (rows, then aliases)
    shard_numbers: list[int] = field(default_factory=list)
    rows: int = 0


def shard_path(out_dir: Path, number: int) -> Path:
    return out_dir / f"part-{number:05d}.parquet"


def list_shards(folder: Path) -> list[Path]:
    """The shard files of an embeddings folder, in shard-number order."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := SHARD_PATTERN.match(p.name))]
    return [path for _, path in sorted(found)]


@dataclass(frozen=True)
class Shard:
    """A shard as it was when a command began reading its folder (see :func:`snapshot`)."""

    path: Path
    size: int
    mtime_ns: int


Shards = Path | Sequence[Shard]  # a folder (read as it is now) or a snapshot of one


def snapshot(folder: Path) -> tuple[Shard, ...]:
    """The shards of an embeddings folder now.

    A command that reads a folder in several passes (``index``: kinds, rows, vectors, recall)
    reads the same snapshot each time. A concurrent ``embed`` may add or rewrite shards
    meanwhile, and passes that saw different shards would pair rows with the wrong vectors.
    """
    shards = []
    for path in list_shards(folder):
        with contextlib.suppress(FileNotFoundError):  # removed since it was listed
            info = path.stat()
            shards.append(Shard(path, info.st_size, info.st_mtime_ns))
    return tuple(shards)


def _snapshot_of(source: Shards) -> Sequence[Shard]:
    return snapshot(source) if isinstance(source, Path) else source


def _open_shard(shard: Shard, stamp: ModelStamp | None) -> tuple[pq.ParquetFile, ModelStamp]:
    """Open a shard for reading, checking it against its snapshot and the folder's model.

    Raises:
        InputError: the shard was removed or rewritten since the snapshot, is unreadable, or
            comes from another model than ``stamp`` (the folder's first shard's).
    """
    try:
        parquet = pq.ParquetFile(shard.path)
        info = shard.path.stat()  # after the open: the file it opened, or a newer one
    except FileNotFoundError:
        info = None
    except (OSError, pa.ArrowException) as error:
        raise _unreadable(shard.path, error) from None
    if info is None or (info.st_size, info.st_mtime_ns) != (shard.size, shard.mtime_ns):
        raise InputError(
            f"The embeddings in {shard.path.parent} changed while they were being read "
            f"({shard.path.name} was rewritten or removed).",
            "Another clipkit command is writing that folder: run this one again when it is done.",
        )
    found = _stamp_from_metadata(parquet.schema_arrow.metadata or {}, shard.path)
    if stamp is not None and found != stamp:
        raise InputError(
            f"Shards in {shard.path.parent} come from different models ({stamp.spec} and "
            f"{found.spec} in {shard.path.name}).",
            "Keep one model per embeddings folder: move the other model's shards out.",
        )
    return parquet, found


def _unreadable(path: Path, error: Exception) -> InputError:
    return InputError(
        f"Embedding shard {path} is unreadable: {str(error).splitlines()[0]}.",
        f"Delete {path.name} and run the same `clipkit embed` command again: it embeds only "
        "what the folder lacks.",
    )


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
        existing.shard_numbers.append(int(SHARD_PATTERN.match(shard.path.name).group(1)))
        existing.rows += columns.num_rows
    existing.uris.update(read_aliases(out_dir))
    return existing


def remove_stale_temporaries(out_dir: Path) -> int:
    """Delete temporary files a killed run left behind; returns how many."""
    stale = list(out_dir.glob(".*.tmp")) if out_dir.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def write_shard(
    path: Path,
    rows: dict[str, Sequence[Any]],
    embeddings: np.ndarray,
    stamp: ModelStamp,
    *,
    float16: bool = False,
) -> None:
    """Write one shard atomically. ``rows`` holds the non-embedding columns, equal lengths.

    Args:
        embeddings: (N, D) float32 unit-norm vectors; stored as float16 when asked.
    """
    values = embeddings.astype(np.float16 if float16 else np.float32, copy=False)
    flat = pa.array(values.reshape(-1))
    columns = {name: pa.array(list(data), type=pa.string()) for name, data in rows.items()}
    columns["embedding"] = pa.FixedSizeListArray.from_arrays(flat, values.shape[1])
    table = pa.table(columns).replace_schema_metadata(_stamp_metadata(stamp))
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


FileStat = tuple[int, int, str]  # (size, mtime_ns, content id)


def read_file_stats(out_dir: Path) -> dict[str, FileStat]:
    """uri -> (size, mtime_ns, id) of the files that earlier runs read; a missing or damaged
    cache is an empty one (the files are then read and hashed again)."""
    path = out_dir / FILES_FILE
    try:
        table = pq.read_table(path) if path.is_file() else None
    except (OSError, pa.ArrowException):
        table = None
    if table is None or set(table.column_names) < {"uri", "size", "mtime_ns", "id"}:
        return {}
    columns = (table.column(name).to_pylist() for name in ("uri", "size", "mtime_ns", "id"))
    return {uri: (size, mtime, item_id) for uri, size, mtime, item_id in zip(*columns, strict=True)}


def write_file_stats(out_dir: Path, stats: dict[str, FileStat]) -> None:
    uris = list(stats)
    table = pa.table({
        "uri": pa.array(uris, pa.string()),
        "size": pa.array([stats[uri][0] for uri in uris], pa.int64()),
        "mtime_ns": pa.array([stats[uri][1] for uri in uris], pa.int64()),
        "id": pa.array([stats[uri][2] for uri in uris], pa.string()),
    })  # fmt: skip
    with atomic_path(out_dir / FILES_FILE) as tmp:
        pq.write_table(table, tmp)


def write_failures(
    out_dir: Path, failures: Sequence[tuple[str, str, str]], name: str = FAILURES_FILE
) -> None:
    """Replace the failures table ``name`` with this run's skipped inputs (uri, stage, error)."""
    uris, stages, errors = (list(column) for column in zip(*failures, strict=True)) if failures \
        else ([], [], [])  # fmt: skip
    table = pa.table(
        {"uri": pa.array(uris, pa.string()), "stage": pa.array(stages, pa.string()),
         "error": pa.array(errors, pa.string())}
    )  # fmt: skip
    with atomic_path(out_dir / name) as tmp:
        pq.write_table(table, tmp)


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
        old = pq.read_table(path, columns=["uri", "id"])
    except (OSError, pa.ArrowException, KeyError) as error:
        raise InputError(
            f"{path} is unreadable: {str(error).splitlines()[0]}.",
            "Delete it and run the same `clipkit embed` command again: it lists the "
            "duplicates anew.",
        ) from None
    return list(zip(old.column("uri").to_pylist(), old.column("id").to_pylist(), strict=True))


def _write_aliases(out_dir: Path, id_of: dict[str, str]) -> None:
    table = pa.table(
        {"id": pa.array(list(id_of.values()), pa.string()),
         "uri": pa.array(list(id_of.keys()), pa.string())}
    )  # fmt: skip
    with atomic_path(out_dir / ALIASES_FILE) as tmp:
        pq.write_table(table, tmp)


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
        small = pq.read_table(path, columns=list(names))  # the vectors only if it changes
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
    table = pq.read_table(path)
    uri_column = table.schema.get_field_index("uri")
    table = table.set_column(uri_column, "uri", pa.array(uris, pa.string()))
    with atomic_path(path) as tmp:
        pq.write_table(table.filter(pa.array(keep)), tmp, compression="zstd")


class InputTable:
    """An input table held as Arrow columns, read by column or by cell.

    A million rows of captions and a few metadata columns take tens of MB this way, against
    about 1 GB as Python dicts (one per row).
    """

    def __init__(self, path: Path, table: pa.Table) -> None:
        self.path = path
        # One chunk per column: a cell lookup never walks a CSV reader's many blocks.
        self._columns = {name: table.column(name).combine_chunks() for name in table.column_names}
        self.rows = table.num_rows

    @property
    def columns(self) -> list[str]:
        return list(self._columns)

    def values(self, name: str) -> list[Any]:
        """One column as Python values, row order."""
        return self._columns[name].to_pylist()

    def cell(self, name: str, row: int) -> Any:
        """One value as a Python object (None where null)."""
        return self._columns[name][row].as_py()


def read_table(path: Path) -> InputTable:
    """A CSV, TSV, JSONL or Parquet table (by suffix).

    Raises:
        InputError: the file cannot be parsed as its suffix says.
    """
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            table = pq.read_table(path)
        elif suffix == ".jsonl":
            table = pa_json.read_json(path)
        else:
            delimiter = "\t" if suffix == ".tsv" else ","
            table = pa_csv.read_csv(path, parse_options=pa_csv.ParseOptions(delimiter=delimiter))
    except (OSError, pa.ArrowException) as error:
        raise InputError(
            f"Cannot read table {path}: {str(error).splitlines()[0].rstrip('.')}.",
            "Check that the file is a valid CSV/TSV (with a header row), JSONL or Parquet table.",
        ) from None
    return InputTable(path, table)


def iter_embeddings(
    source: Shards, columns: Sequence[str] = CORE_COLUMNS, batch_rows: int = 65536
) -> Iterator[pa.RecordBatch]:
    """Stream record batches from an embeddings folder (or a snapshot of one), shard by shard."""
    for _, batch in _iter_batches(source, columns, batch_rows):
        yield batch


def _iter_batches(
    source: Shards, columns: Sequence[str] | None, batch_rows: int
) -> Iterator[tuple[Path, pa.RecordBatch]]:
    """(shard path, batch) of the ``columns`` each shard has (None: all of them)."""
    stamp = None
    for shard in _snapshot_of(source):
        parquet, stamp = _open_shard(shard, stamp)
        names = parquet.schema_arrow.names
        wanted = names if columns is None else [c for c in columns if c in names]
        try:
            for batch in parquet.iter_batches(batch_size=batch_rows, columns=wanted):
                yield shard.path, batch
        except (OSError, pa.ArrowException) as error:  # damaged pages behind a sound footer
            raise _unreadable(shard.path, error) from None


@dataclass(frozen=True)
class VectorBlock:
    """Rows of one record batch: metadata columns and their (N, D) float32 embeddings."""

    ids: list[str]
    uris: list[str]
    kinds: list[str]
    texts: list[str | None]
    vectors: np.ndarray
    meta: dict[str, list[str | None]] = field(default_factory=dict)  # pass-through columns

    def columns(self) -> dict[str, list[Any]]:
        """The row-map columns: id, uri, kind, text and the pass-through ones."""
        return {"id": self.ids, "uri": self.uris, "kind": self.kinds, "text": self.texts,
                **self.meta}  # fmt: skip

    def append_to(self, rows: dict[str, list[Any]], keep: Sequence[int] | None = None) -> None:
        """Append these rows (or those at positions ``keep``) to a row map, column by column.

        Shards made from different tables carry different pass-through columns: a column that
        one side lacks is filled with None, so every column keeps one value per row.
        """
        before = len(rows.get("id", ()))
        added = len(self.ids) if keep is None else len(keep)
        for name, values in self.columns().items():
            column = rows.setdefault(name, [None] * before)
            column.extend(values if keep is None else [values[i] for i in keep])
        for column in rows.values():
            column.extend([None] * (before + added - len(column)))


def iter_vectors(
    source: Shards, kind: str | None = None, batch_rows: int = 65536, *, meta: bool = False
) -> Iterator[VectorBlock]:
    """Stream :class:`VectorBlock` s from an embeddings folder (or a snapshot of one), keeping
    rows of ``kind`` only, with their pass-through columns when ``meta``.

    Raises:
        InputError: a kept row's embedding is missing (null) or not finite (NaN, inf). Such a
            row would rank first in every search and poison the index, so it is not read. Also
            what :func:`_open_shard` raises.
    """
    for path, batch in _iter_batches(source, None if meta else CORE_COLUMNS, batch_rows):
        kinds = batch.column("kind").to_pylist()
        keep = np.array([kind is None or k == kind for k in kinds], dtype=bool)
        if not keep.any():
            continue
        uris = batch.column("uri").to_pylist()
        vectors = _embedding_matrix(batch.column("embedding"), keep, path, uris)
        chosen = np.flatnonzero(keep).tolist()
        extra = [name for name in batch.schema.names if name not in CORE_COLUMNS]
        yield VectorBlock(
            ids=_pick(batch.column("id").to_pylist(), chosen),
            uris=_pick(uris, chosen),
            kinds=_pick(kinds, chosen),
            texts=_pick(batch.column("text").to_pylist(), chosen),
            vectors=np.ascontiguousarray(vectors),
            meta={name: _pick(batch.column(name).to_pylist(), chosen) for name in extra},
        )


def _pick(values: list[Any], positions: list[int]) -> list[Any]:
    return [values[i] for i in positions]


def _embedding_matrix(
    column: pa.FixedSizeListArray, keep: np.ndarray, path: Path, uris: list
) -> np.ndarray:
    """(kept, D) float32 of the ``keep`` rows of an ``embedding`` column; null or non-finite
    ones are refused."""
    dim = column.type.list_size
    # Null rows keep their slots in the child array: take the values by position, not flatten().
    flat = column.values.slice(column.offset * dim, len(column) * dim)
    vectors = flat.to_numpy(zero_copy_only=False).reshape(-1, dim)[keep]
    vectors = vectors.astype(np.float32, copy=False)
    bad = np.zeros(len(column), dtype=bool)
    bad[keep] = ~np.isfinite(vectors).all(axis=1)
    if column.null_count:
        bad |= column.is_null().to_numpy(zero_copy_only=False) & keep
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"{path} holds {int(bad.sum())} embedding(s) that are missing or not finite "
            f"(NaN or inf), the first for {uris[first]}.",
            f"Delete {path.name} and run the same `clipkit embed` command again: it embeds "
            "only what the folder lacks.",
        )
    return vectors


def read_vectors(source: Shards, kind: str | None = None) -> VectorBlock:
    """Every row of ``kind`` in an embeddings folder as one block (vectors: (N, D) float32)."""
    blocks = list(iter_vectors(source, kind))
    vectors = [b.vectors for b in blocks]
    return VectorBlock(
        ids=[i for b in blocks for i in b.ids],
        uris=[u for b in blocks for u in b.uris],
        kinds=[k for b in blocks for k in b.kinds],
        texts=[t for b in blocks for t in b.texts],
        vectors=np.concatenate(vectors) if vectors else np.zeros((0, 0), np.float32),
    )  # fmt: skip


def with_aliases(rows: VectorBlock, folder: Path) -> VectorBlock:
    """``rows`` plus a row for each further path of their content that ``_aliases.parquet``
    lists (same id, kind, text and vector), all in uri order, as discovery orders a source.

    A folder of copies then reads like the source it was embedded from: an audit or zero-shot
    run over the embeddings covers every file, not one file per distinct content.
    """
    number = {item_id: n for n, item_id in enumerate(rows.ids)}
    seen = set(rows.uris)
    order = [(uri, n) for n, uri in enumerate(rows.uris)]
    order += [(uri, number[item_id]) for uri, item_id in read_aliases(folder)
              if item_id in number and uri not in seen]  # fmt: skip
    order.sort()
    picked = [n for _, n in order]
    return VectorBlock(
        ids=[rows.ids[n] for n in picked],
        uris=[uri for uri, _ in order],
        kinds=[rows.kinds[n] for n in picked],
        texts=[rows.texts[n] for n in picked],
        vectors=rows.vectors[picked] if len(rows.vectors) else rows.vectors,
    )


def shard_signature(source: Shards) -> list[dict[str, Any]]:
    """Name, size and modification time of each shard: detects a changed source folder."""
    return [{"name": shard.path.name, "size": shard.size, "mtime_ns": shard.mtime_ns}
            for shard in _snapshot_of(source)]  # fmt: skip


def write_rows(path: Path, rows: dict[str, list[Any]]) -> None:
    """Write an index's row map (row -> id, uri, kind, text) to a path the caller staged."""
    table = pa.table({name: pa.array(values, pa.string()) for name, values in rows.items()})
    pq.write_table(table, path)


def write_records(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """Write flat dicts (one per row, same keys) as a Parquet table atomically."""
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pylist(list(records)), tmp)


def read_rows(path: Path) -> dict[str, list[Any]]:
    """Read an index's row map; raises InputError when missing or unreadable."""
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as error:
        raise InputError(
            f"The index row map {path} is missing or unreadable ({str(error).splitlines()[0]}).",
            "Rebuild the index with clipkit index.",
        ) from None
    return {name: table.column(name).to_pylist() for name in table.column_names}


def read_stamp(source: Shards) -> ModelStamp | None:
    """The model stamp of an embeddings folder (from its first shard), or None if empty."""
    shards = _snapshot_of(source)
    return _open_shard(shards[0], None)[1] if shards else None


def _stamp_metadata(stamp: ModelStamp) -> dict[str, str]:
    return {
        "clipkit.version": __version__,
        "clipkit.model": stamp.spec,
        "clipkit.fingerprint": stamp.fingerprint,
        "clipkit.dim": str(stamp.dim),
    }


def _stamp_from_metadata(metadata: dict[bytes, bytes], path: Path) -> ModelStamp:
    decoded = {k.decode(): v.decode() for k, v in metadata.items()}
    if "clipkit.fingerprint" not in decoded:
        raise InputError(
            f"{path} was not written by clipkit embed (no model fingerprint).",
            "Use an empty output folder, or one made by clipkit embed.",
        )
    return ModelStamp(decoded["clipkit.model"], decoded["clipkit.fingerprint"],
                      int(decoded["clipkit.dim"]))  # fmt: skip


def to_json(value: Any) -> str:
    """Pass-through metadata values as text (tables mix types; strings always round-trip)."""
    return value if isinstance(value, str) else json.dumps(value, default=str)
