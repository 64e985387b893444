"""Input tables (CSV, TSV, JSONL, Parquet) held as Arrow columns, and an index's row map."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from clipkit.errors import InputError
from clipkit.infra.atomic import atomic_path


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


def write_row_map(path: Path, rows: dict[str, list[Any]]) -> None:
    """Write an index's row map (row -> id, uri, kind, text) to a path the caller staged."""
    table = pa.table({name: pa.array(values, pa.string()) for name, values in rows.items()})
    pq.write_table(table, path)


def write_records(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """Write flat dicts (one per row, same keys) as a Parquet table atomically."""
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pylist(list(records)), tmp)


def read_row_map(path: Path) -> dict[str, list[Any]]:
    """Read an index's row map; raises InputError when missing or unreadable."""
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as error:
        raise InputError(
            f"The index row map {path} is missing or unreadable ({str(error).splitlines()[0]}).",
            "Rebuild the index with clipkit index.",
        ) from None
    return {name: table.column(name).to_pylist() for name in table.column_names}
