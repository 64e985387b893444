"""Embedding shards: writing them, and reading an embeddings folder (or a snapshot of it)
checked shard by shard against its snapshot and its model.

A shard is ``part-NNNNN.parquet`` with columns ``id``, ``uri``, ``kind``, ``text``,
``embedding`` and pass-through metadata, and schema metadata ``clipkit.*`` naming the model
and ``clipkit.base``, the folder its relative uris are relative to (see
:mod:`clipkit.inputs.filenames`).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import decimal
import json
import re
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clipkit import __version__
from clipkit.errors import InputError
from clipkit.infra.atomic import atomic_path
from clipkit.store import parquet as parquet_io

SHARD_PATTERN = re.compile(r"^part-(\d{5,})\.parquet$")
CORE_COLUMNS = ("id", "uri", "kind", "text", "embedding")
BASE_KEY = "clipkit.base"
# Rows per record batch read from a shard. At 512 dimensions, 16,384 against 65,536 halved the
# peak memory of an exact search over 100,000-row shards (0.6 against 1.3 GB of growth) and ran
# it 2.3x faster; an index build took the same time in 0.7 GB less.
BATCH_ROWS = 16384
# Rows per Parquet row group of a shard: a reader decodes a whole row group's column chunk (and
# its list levels), so row groups of one batch cut exact search at 1 M x 512 from 1.49 to
# 1.16 GiB at the same speed (bench_exact_search_memory.py).
ROW_GROUP_ROWS = BATCH_ROWS


@dataclass(frozen=True)
class ModelStamp:
    """The identity of the model that made a set of embeddings."""

    spec: str
    fingerprint: str
    dim: int


def shard_path(out_dir: Path, number: int) -> Path:
    return out_dir / f"part-{number:05d}.parquet"


def list_shards(folder: Path) -> list[Path]:
    """The shard files of an embeddings folder, in shard-number order."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := SHARD_PATTERN.match(p.name))]
    return [path for _, path in sorted(found)]


def no_embeddings(folder: Path) -> InputError:
    """The error for a folder that holds no shards, saying which of the three it is: absent,
    a file, or a folder without ``part-*.parquet``."""
    folder = Path(folder)
    if not folder.exists():
        return InputError(
            f"Embeddings folder {folder} does not exist.",
            f"Check the path, or make it with: clipkit embed SOURCES -o {folder}",
        )
    if not folder.is_dir():
        return InputError(
            f"{folder} is a file, not an embeddings folder.",
            "Pass the folder that clipkit embed wrote (its -o).",
        )
    return InputError(
        f"{folder} holds no embeddings (no part-*.parquet shards).",
        f"Make them first with: clipkit embed SOURCES -o {folder}",
    )


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
        # Not pre-buffered: fetching the row groups' chunks ahead cost 0.15 GB more at 512-d.
        parquet = parquet_io.open_file(shard.path, pre_buffer=False)
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
    missing = [name for name in CORE_COLUMNS if name not in parquet.schema_arrow.names]
    if missing:
        raise _unreadable(shard.path, OSError(f"it has no {', '.join(missing)} column"))
    found = _stamp_from_metadata(parquet_io.key_values(parquet), shard.path)
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


def write_shard(
    path: Path,
    rows: Mapping[str, Sequence[Any]],
    embeddings: np.ndarray,
    stamp: ModelStamp,
    *,
    float16: bool = False,
    base: str | None = None,
) -> None:
    """Write one shard atomically. ``rows`` holds the non-embedding columns, equal lengths.

    Args:
        embeddings: (N, D) float32 unit-norm vectors; stored as float16 when asked.
        base: the absolute folder that relative uris in ``rows`` are relative to.
    """
    values = embeddings.astype(np.float16 if float16 else np.float32, copy=False)
    flat = pa.array(values.reshape(-1))
    columns = {name: pa.array(list(data), type=pa.string()) for name, data in rows.items()}
    columns["embedding"] = pa.FixedSizeListArray.from_arrays(flat, values.shape[1])
    metadata = _stamp_metadata(stamp) | ({BASE_KEY: base} if base is not None else {})
    table = pa.table(columns).replace_schema_metadata(metadata)
    with atomic_path(path) as tmp:
        parquet_io.write(table, tmp, compression="zstd", row_group_size=ROW_GROUP_ROWS)


def iter_embeddings(
    source: Shards, columns: Sequence[str] = CORE_COLUMNS, batch_rows: int = BATCH_ROWS
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
        read = 0
        try:
            for batch in parquet.iter_batches(batch_size=batch_rows, columns=wanted):
                read += batch.num_rows
                yield shard.path, batch
        except (OSError, pa.ArrowException) as error:  # damaged pages behind a sound footer
            raise _unreadable(shard.path, error) from None
        if read != parquet.metadata.num_rows:  # a damaged page header can end a column early
            held = parquet.metadata.num_rows
            raise _unreadable(shard.path, OSError(f"it holds {held} rows, {read} could be read"))


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
        return {
            "id": self.ids,
            "uri": self.uris,
            "kind": self.kinds,
            "text": self.texts,
            **self.meta,
        }

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


def default_kind(source: Shards) -> str:
    """The rows a search or an index of this folder is over unless told: its images if it has
    any (a text query finds pictures), else its texts. Reads the ``kind`` column only, and
    stops at the first image."""
    for batch in iter_embeddings(source, ("kind",)):
        if "image" in batch.column("kind").to_pylist():
            return "image"
    return "text"


def iter_vectors(
    source: Shards, kind: str | None = None, batch_rows: int = BATCH_ROWS, *, meta: bool = False
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


def iter_ids_and_vectors(
    source: Shards, kind: str | None = None, batch_rows: int = BATCH_ROWS
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Stream (ids (N,), vectors (N, D) float32) of the rows of ``kind``: what an exact scan
    keeps of each row. The ids come as fixed-width bytes where they allow it (clipkit's are
    hex), and no column becomes Python objects.

    Raises:
        InputError: as :func:`iter_vectors`.
    """
    import pyarrow.compute as pc  # here, not on top: an index search never needs it (40 ms)

    for path, batch in _iter_batches(source, ("id", "uri", "kind", "embedding"), batch_rows):
        kinds = batch.column("kind")
        if kind is None:
            keep = np.ones(len(kinds), dtype=bool)
        else:
            keep = pc.equal(kinds, kind).fill_null(False).to_numpy(zero_copy_only=False)
        if not keep.any():
            continue
        uris = batch.column("uri")
        vectors = _embedding_matrix(batch.column("embedding"), keep, path, uris.to_pylist)
        yield _id_array(batch.column("id"))[keep], np.ascontiguousarray(vectors)


def _id_array(ids: pa.Array) -> np.ndarray:
    """A string column as fixed-width bytes, straight from its buffers when every value has the
    same length (32 per row for clipkit's ids, against about 90 as Python strings)."""
    import pyarrow.compute as pc  # here, not on top: an index search never needs it (40 ms)

    if pa.types.is_string(ids.type) and ids.null_count == 0 and len(ids):
        lengths = pc.min_max(pc.binary_length(ids))
        width = lengths["min"].as_py()
        if width and width == lengths["max"].as_py():
            offsets = np.frombuffer(
                ids.buffers()[1], dtype=np.int32, count=len(ids) + 1, offset=4 * ids.offset
            )
            return np.frombuffer(
                ids.buffers()[2], dtype=f"S{width}", count=len(ids), offset=int(offsets[0])
            ).copy()
    return np.array(ids.to_pylist(), dtype=object)


def read_rows_by_id(source: Shards, ids: Collection[str]) -> dict[str, dict[str, Any]]:
    """id -> the row with that id, every column but the embedding: ``uri``, ``kind``, ``text``
    and its non-null pass-through values.

    An exact search keeps only the ids of the rows it scans, then reads its hits' rows here,
    so its memory does not grow with every row's paths, texts and metadata.
    """
    import pyarrow.compute as pc  # here, not on top: an index search never needs it (40 ms)

    wanted = pa.array(sorted(ids), pa.string())
    found: dict[str, dict[str, Any]] = {}
    stamp = None
    for shard in _snapshot_of(source):
        parquet, stamp = _open_shard(shard, stamp)
        if not len(wanted):
            break
        names = [name for name in parquet.schema_arrow.names if name != "embedding"]
        try:
            table = parquet.read(columns=names)
        except (OSError, pa.ArrowException) as error:
            raise _unreadable(shard.path, error) from None
        table = table.filter(pc.is_in(table.column("id"), value_set=wanted))
        for row in table.to_pylist():
            item_id = row.pop("id")
            found[item_id] = {
                name: value
                for name, value in row.items()
                if value is not None or name in CORE_COLUMNS
            }
    return found


def _pick(values: list[Any], positions: list[int]) -> list[Any]:
    return [values[i] for i in positions]


# How far from 1 a stored embedding's norm may be: float16 keeps each value to 1 part in 2,048,
# so a unit vector stored in it has a norm within 5e-4 of 1 (float32: within 1e-6).
NORM_TOLERANCE = 2e-3


def _embedding_matrix(
    column: pa.FixedSizeListArray,
    keep: np.ndarray,
    path: Path,
    uris: Sequence[str] | Callable[[], Sequence[str]],
) -> np.ndarray:
    """(kept, D) float32 of the ``keep`` rows of an ``embedding`` column; null, non-finite or
    not unit-norm ones are refused, naming the first one's uri (``uris``, or a function that
    lists them)."""
    dim = column.type.list_size
    # Null rows keep their slots in the child array: take the values by position, not flatten().
    flat = column.values.slice(column.offset * dim, len(column) * dim)
    vectors = flat.to_numpy(zero_copy_only=False).reshape(-1, dim)[keep]
    vectors = vectors.astype(np.float32, copy=False)
    missing = np.zeros(len(column), dtype=bool)
    if column.null_count:
        missing = column.is_null().to_numpy(zero_copy_only=False) & keep
    norms = np.full(len(column), 1.0)
    norms[keep] = np.sqrt(np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64))
    norms[missing] = 1.0
    # A flipped bit (a value of 2.75e37) is finite, but ranks first for every query and makes
    # zero-shot probabilities NaN: every clipkit embedding has unit norm, so that is checked.
    not_finite = ~np.isfinite(norms)
    off_norm = np.isfinite(norms) & (np.abs(norms - 1.0) > NORM_TOLERANCE)
    bad = missing | not_finite | off_norm
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        uris = uris() if callable(uris) else uris
        what = [
            f"{int(rows.sum())} {name}"
            for rows, name in (
                (missing, "missing"),
                (not_finite, "not finite (NaN or inf)"),
                (off_norm, "not of unit norm"),
            )
            if rows.any()
        ]
        if off_norm.any():
            what[-1] += f" (a norm of {norms[np.flatnonzero(off_norm)[0]]:.4g}: a damaged file)"
        raise InputError(
            f"{path} holds embeddings that are {', '.join(what)}; the first for {uris[first]}.",
            f"Delete {path.name} and run the same `clipkit embed` command again: it embeds "
            "only what the folder lacks.",
        )
    return vectors


def read_vectors(source: Shards, kind: str | None = None, *, meta: bool = False) -> VectorBlock:
    """Every row of ``kind`` in an embeddings folder as one block (vectors: (N, D) float32),
    with the pass-through columns when ``meta`` (None where a shard lacks one)."""
    blocks = list(iter_vectors(source, kind, meta=meta))
    vectors = [b.vectors for b in blocks]
    names = list(dict.fromkeys(name for b in blocks for name in b.meta))
    return VectorBlock(
        ids=[i for b in blocks for i in b.ids],
        uris=[u for b in blocks for u in b.uris],
        kinds=[k for b in blocks for k in b.kinds],
        texts=[t for b in blocks for t in b.texts],
        vectors=np.concatenate(vectors) if vectors else np.zeros((0, 0), np.float32),
        meta={
            name: [v for b in blocks for v in b.meta.get(name, [None] * len(b.ids))]
            for name in names
        },
    )


def shard_signature(source: Shards) -> list[dict[str, Any]]:
    """Name, size and modification time of each shard: detects a changed source folder."""
    return [
        {"name": shard.path.name, "size": shard.size, "mtime_ns": shard.mtime_ns}
        for shard in _snapshot_of(source)
    ]


def read_stamp(source: Shards) -> ModelStamp | None:
    """The model stamp of an embeddings folder (from its first shard), or None if empty."""
    shards = _snapshot_of(source)
    return _open_shard(shards[0], None)[1] if shards else None


def read_base(source: Shards) -> str | None:
    """The folder the relative uris of an embeddings folder are relative to, as its newest
    shard that records one says (None for a folder from before clipkit recorded it)."""
    for shard in reversed(_snapshot_of(source)):
        try:
            metadata = parquet_io.key_values(parquet_io.open_file(shard.path))
        except FileNotFoundError:  # removed since the snapshot (a concurrent --prune)
            continue
        except (OSError, pa.ArrowException) as error:
            raise _unreadable(shard.path, error) from None
        if BASE_KEY.encode() in metadata:
            return metadata[BASE_KEY.encode()].decode()
    return None


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
    return ModelStamp(
        decoded["clipkit.model"], decoded["clipkit.fingerprint"], int(decoded["clipkit.dim"])
    )


def to_json(value: Any) -> str:
    """A pass-through value as text (tables mix types; strings always round-trip).

    Strings stay as they are, dates and times become ISO 8601, bytes base64, decimals their
    exact digits; numbers, lists and structs become JSON (with the same rules inside).
    """
    if isinstance(value, str):
        return value
    plain = _plain(value)
    return plain if isinstance(plain, str) else json.dumps(plain, default=_json_default)


def _json_default(value: Any) -> str:
    """What ``json.dumps`` calls for a value it cannot hold."""
    plain = _plain(value)
    return str(value) if plain is value else plain


def _plain(value: Any) -> Any:
    """Text for a value that JSON cannot hold, else the value unchanged."""
    if isinstance(value, (datetime.date, datetime.time)):  # datetimes are dates too
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, (decimal.Decimal, datetime.timedelta)):
        return str(value)
    return value
