"""Input tables (CSV, TSV, JSONL, Parquet) held as Arrow columns, and an index's row map."""

from __future__ import annotations

import bisect
import contextlib
import functools
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from clipkit.errors import InputError
from clipkit.infra.atomic import atomic_path
from clipkit.store import parquet as parquet_io


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

    def paths(self, name: str) -> list[str | None]:
        """An image column's values: strings only (a bytes or list cell used to become the
        path ``b'img/t0.png'``).

        Raises:
            InputError: the column holds anything but strings, naming it and its type.
        """
        return self._strings(name, "image paths", numbers=False)

    def texts(self, name: str) -> list[str | None]:
        """A text column's values: strings, or numbers and booleans written as text (a CSV
        reader reads a caption of "42" as a number).

        Raises:
            InputError: the column holds bytes, lists or other values that are not text
                (a list caption used to be embedded, and trained on, as "[1, 2]").
        """
        return self._strings(name, "texts", numbers=True)

    def _strings(self, name: str, what: str, *, numbers: bool) -> list[str | None]:
        column = self._columns[name]
        kind = column.type
        if pa.types.is_dictionary(kind):
            kind = kind.value_type
        textual = (
            pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)
        )
        if hasattr(pa.types, "is_string_view"):
            textual = textual or pa.types.is_string_view(kind)
        readable = numbers and (
            pa.types.is_integer(kind)
            or pa.types.is_floating(kind)
            or pa.types.is_decimal(kind)
            or pa.types.is_boolean(kind)
        )
        if not (textual or readable):
            raise InputError(
                f"Column {name!r} of {self.path} holds {kind} values, not {what}.",
                f"Store {what} as strings (UTF-8 text), or name another column.",
            )
        values = column.to_pylist()
        return values if textual else [None if v is None else str(v) for v in values]

    def cell(self, name: str, row: int) -> Any:
        """One value as a Python object (None where null)."""
        return self._columns[name][row].as_py()


def read_table(path: Path) -> InputTable:
    """A CSV, TSV, JSONL or Parquet table (by suffix).

    Raises:
        InputError: the file cannot be parsed as its suffix says.
    """
    suffix = path.suffix.lower()
    with _naming_unreadable(path):
        if suffix == ".parquet":
            table = pq.read_table(path)
        elif suffix == ".jsonl":
            table = pa_json.read_json(path)
        else:
            table = pa_csv.read_csv(path, parse_options=_csv_options(suffix))
    return InputTable(path, table)


def table_columns(path: Path) -> list[str]:
    """A table's column names, from its header (CSV, TSV), schema (Parquet) or first block of
    lines (JSONL): a check of the columns before any work reads no more than that.

    Raises:
        InputError: the file cannot be parsed as its suffix says.
    """
    suffix = path.suffix.lower()
    with _naming_unreadable(path):
        if suffix == ".parquet":
            return list(pq.read_schema(path).names)
        opened = (
            pa_json.open_json(path)
            if suffix == ".jsonl"
            else pa_csv.open_csv(path, parse_options=_csv_options(suffix))
        )
        with opened as reader:
            return list(reader.schema.names)


def _csv_options(suffix: str) -> pa_csv.ParseOptions:
    return pa_csv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",")


@contextlib.contextmanager
def _naming_unreadable(path: Path) -> Iterator[None]:
    """Turn Arrow's and the OS's read errors into an InputError that names the table."""
    try:
        yield
    except (OSError, pa.ArrowException) as error:
        raise InputError(
            f"Cannot read table {path}: {str(error).splitlines()[0].rstrip('.')}.",
            "Check that the file is a valid CSV/TSV (with a header row), JSONL or Parquet table.",
        ) from None


# Rows in a row group of an index's row map: a search reads the groups of its hits only.
ROW_MAP_GROUP = 8192
ROW_MAP_COLUMNS = ("id", "uri", "kind", "text")  # then any pass-through columns


def write_row_map(path: Path, rows: dict[str, list[Any]]) -> None:
    """Write an index's row map (row -> id, uri, kind, text) to a path the caller staged."""
    table = pa.table({name: pa.array(values, pa.string()) for name, values in rows.items()})
    # Page checksums and a sealed footer: a search checks what it reads (see index.parts).
    parquet_io.write(table, path, row_group_size=ROW_MAP_GROUP)


def write_records(
    path: Path, records: Sequence[dict[str, Any]], columns: Sequence[str] | None = None
) -> None:
    """Write flat dicts (one per row, same keys) as a Parquet table atomically; with no
    records, a table of ``columns`` (strings) and no rows."""
    if records or not columns:
        table = pa.Table.from_pylist(list(records))
    else:
        table = pa.table({name: pa.array([], pa.string()) for name in columns})
    with atomic_path(path) as tmp:
        parquet_io.write(table, tmp)


class RowMap:
    """An index's row map (row ``r`` describes vector ``r``), read from Parquet as needed.

    A search reads only the row groups that hold its hits (``take``): reading and converting
    a 100,000-row map whole took longer than the search itself. ``column`` reads one column
    whole, for the paths that walk every row (an index update). The file stays open, so the
    map is the one that was opened even if an update replaces the file meanwhile. Safe to
    share between threads (``clipkit serve``): pyarrow's reader of one file is not, and
    concurrent reads of it failed or crashed the process, so reads take a lock.
    """

    def __init__(self, path: Path, source: pq.ParquetFile) -> None:
        self.path = path
        self._source = source
        meta = source.metadata
        self._starts = [0]
        for group in range(meta.num_row_groups):
            self._starts.append(self._starts[-1] + meta.row_group(group).num_rows)
        self._groups: dict[int, pa.Table] = {}
        self._names = list(source.schema_arrow.names)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._starts[-1]

    @property
    def names(self) -> list[str]:
        return list(self._names)

    def column(self, name: str) -> list[Any]:
        """Every row's value in column ``name``."""
        return self._read(lambda: self._source.read(columns=[name])).column(name).to_pylist()

    def to_lists(self) -> dict[str, list[Any]]:
        """The whole map as one list per column (to edit and write back)."""
        table = self._read(self._source.read)
        return {name: table.column(name).to_pylist() for name in table.column_names}

    def take(self, positions: Sequence[int]) -> dict[str, list[Any]]:
        """The rows at ``positions`` (each in 0..len-1), as one list per column, in order."""
        picked = []
        for position in positions:
            group = bisect.bisect_right(self._starts, position) - 1
            if group not in self._groups:
                table = self._read(functools.partial(self._read_group, group))
                self._groups.setdefault(group, table)
            # A one-row slice is zero-copy; Table.take would import pyarrow.compute (~40 ms)
            row = self._groups[group].slice(position - self._starts[group], 1)
            picked.append(row.to_pylist()[0])
        return {name: [row[name] for row in picked] for name in self._names}

    def _read_group(self, group: int) -> pa.Table:
        return self._source.read_row_group(group, use_threads=False)

    def _read(self, read: Callable[[], pa.Table]) -> pa.Table:
        try:
            with self._lock:
                return read()
        except (OSError, pa.ArrowException) as error:
            raise _unreadable(self.path, error) from None


def read_row_map(path: Path, opened: BinaryIO | None = None) -> RowMap:
    """Open an index's row map (its metadata only; rows are read as asked for), from
    ``opened`` where the caller has the file open already (``path`` then names it).

    Raises:
        InputError: the file is missing, not Parquet, damaged, or lacks a column.
    """
    try:
        # ParquetFile, not read_table: read_table goes through pyarrow.dataset (~60 ms more)
        rows = RowMap(path, parquet_io.open_file(opened if opened is not None else path))
    except parquet_io.DamagedParquet as error:
        raise InputError(f"The index row map {path} is damaged ({error}).", _REBUILD) from None
    except (OSError, pa.ArrowException) as error:
        raise _unreadable(path, error) from None
    missing = [name for name in ROW_MAP_COLUMNS if name not in rows.names]
    if missing:  # a renamed column (a damaged footer in a file made before footers were sealed)
        raise InputError(
            f"The index row map {path} is damaged: it has no {', '.join(missing)} column.",
            _REBUILD,
        )
    return rows


_REBUILD = "Rebuild the index with clipkit index."


def _unreadable(path: Path, error: Exception) -> InputError:
    return InputError(
        f"The index row map {path} is missing or unreadable ({str(error).splitlines()[0]}).",
        _REBUILD,
    )
