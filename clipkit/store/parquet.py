"""Parquet as clipkit writes and reads its own files, so that a flipped bit is refused, never
read as other data: every page carries a CRC-32 that reading checks (Parquet's page
checksums), and the footer's column names and key-value metadata (a shard's model stamp and
base) are sealed by a CRC-32 of their own, which the format lacks.

Files written before seals have none, and read as before.
"""

from __future__ import annotations

import os
import zlib
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

SEAL_KEY = b"clipkit.footer_crc32"
ARROW_SCHEMA_KEY = b"ARROW:schema"  # pyarrow's own copy of the schema, not sealed


class DamagedParquet(OSError):
    """A Parquet file whose schema or metadata fails its seal (readers name the file)."""


def write(table: pa.Table, path: str | os.PathLike[str], **options: Any) -> None:
    """Write ``table`` with page checksums and the footer seal (``options``: as
    ``pyarrow.parquet.write_table``)."""
    metadata = dict(table.schema.metadata or {})
    metadata.pop(SEAL_KEY, None)
    sealed = table.replace_schema_metadata({**metadata, SEAL_KEY: _seal(table.schema, metadata)})
    pq.write_table(sealed, path, write_page_checksum=True, **options)


def read(path: str | os.PathLike[str], columns: list[str] | None = None) -> pa.Table:
    """The table at ``path`` (or its ``columns``), checked.

    Raises:
        OSError: a page fails its checksum, or the footer its seal (DamagedParquet).
        pyarrow.ArrowException: a file Parquet cannot parse at all.
    """
    return open_file(path).read(columns=columns)


def open_file(path: str | os.PathLike[str] | BinaryIO, **options: Any) -> pq.ParquetFile:
    """A ``ParquetFile`` (of a path, or of a file open for reading) whose footer is checked
    now and whose pages are checked as they are read (``options``: as
    ``pyarrow.parquet.ParquetFile``)."""
    try:
        parquet = pq.ParquetFile(path, page_checksum_verification=True, **options)
        schema = parquet.schema_arrow
    except UnicodeDecodeError:  # a column name that is no longer UTF-8
        raise _damaged(path) from None
    values = key_values(parquet)  # text, or DamagedParquet
    recorded = (parquet.metadata.metadata or {}).get(SEAL_KEY)
    if recorded is not None and recorded != _seal(schema, values):
        raise _damaged(path)
    return parquet


def _damaged(path: str | os.PathLike[str] | BinaryIO) -> DamagedParquet:
    name = os.fspath(path) if isinstance(path, str | os.PathLike) else path.name
    return DamagedParquet(f"{name}: its schema or metadata fails its checksum")


def key_values(parquet: pq.ParquetFile) -> dict[bytes, bytes]:
    """The file's key-value metadata as sealed (a shard's stamp and base): the footer's own,
    not the copy inside pyarrow's ``ARROW:schema``, which the seal cannot cover (pyarrow
    writes it after the seal is made)."""
    metadata = dict(parquet.metadata.metadata or {})
    metadata.pop(ARROW_SCHEMA_KEY, None)
    metadata.pop(SEAL_KEY, None)
    for text in (*metadata, *metadata.values()):
        try:
            text.decode()
        except UnicodeDecodeError:  # clipkit writes text: this is a damaged footer
            raise DamagedParquet("its footer's metadata is not text") from None
    return metadata


def _seal(schema: pa.Schema, metadata: dict[bytes, bytes]) -> bytes:
    """CRC-32 of the columns (names and types) and the key-value metadata, as hex."""
    parts = [f"{field.name}\0{_type(field.type)}".encode() for field in schema]
    parts += [key + b"\0" + value for key, value in sorted(metadata.items())]
    checksum = zlib.crc32(b"\1".join(parts))
    return f"{checksum:08x}".encode()


def _type(kind: pa.DataType) -> str:
    """A type as a round trip keeps it: without the name of a list's item field, which
    Parquet renames (``item`` is read back as ``element``)."""
    if pa.types.is_fixed_size_list(kind):
        return f"fixed_size_list<{_type(kind.value_type)}>[{kind.list_size}]"
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return f"list<{_type(kind.value_type)}>"
    return str(kind)
