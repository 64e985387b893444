"""D1 of issue #37: a flipped bit in an embeddings shard, a side table or an index's row map is
refused by name, never read as other data (one flip in a shard's uri column read back as
another file's uri 312 times in 694, and flips in ids and vectors passed silently)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clipkit import store
from clipkit.errors import InputError
from clipkit.store import parquet as parquet_io

STAMP = store.ModelStamp("clipkit-tiny:random", "0123456789abcdef", 8)


def _shard(folder: Path) -> Path:
    """A shard as embed writes it: five rows, unit vectors, a base, the model's stamp."""
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((5, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rows = {
        "id": [f"{n:016x}" for n in range(5)],
        "uri": [f"photos/img{n}.png" for n in range(5)],
        "kind": ["image"] * 5,
        "text": [None] * 5,
    }
    path = store.shard_path(folder, 0)
    folder.mkdir(parents=True, exist_ok=True)
    store.write_shard(path, rows, vectors, STAMP, base=str(folder))
    return path


def _read(folder: Path):
    block = store.read_vectors(folder, meta=True)
    return (
        block.columns(),
        block.vectors.tobytes(),
        store.read_stamp(folder),
        store.read_base(folder),
    )


def _flips(path: Path):
    """Each byte of the file with one bit flipped, in turn; the file restored after."""
    original = path.read_bytes()
    try:
        for offset in range(len(original)):
            damaged = bytearray(original)
            damaged[offset] ^= 1 << (offset % 8)
            path.write_bytes(bytes(damaged))
            yield offset
    finally:
        path.write_bytes(original)


def test_every_flipped_bit_of_a_shard_is_refused_by_name_or_changes_nothing(tmp_path):
    folder = tmp_path / "emb"
    path = _shard(folder)
    expected = _read(folder)
    refused, unchanged = 0, 0
    for offset in _flips(path):
        try:
            got = _read(folder)
        except InputError as error:
            assert path.name in error.message, (offset, error.message)
            refused += 1
            continue
        assert got == expected, f"a flip at byte {offset} read as other data"
        unchanged += 1  # padding, statistics, names of nested fields: nothing a reader uses
    assert refused > 0.6 * (refused + unchanged)


def test_a_flipped_bit_in_the_aliases_table_is_refused_by_name(tmp_path):
    folder = tmp_path / "emb"
    _shard(folder)
    store.add_aliases(folder, [("0000000000000001", "photos/copy.png")])
    path = folder / store.ALIASES_FILE
    expected = store.read_aliases(folder)
    for offset in _flips(path):
        try:
            got = store.read_aliases(folder)
        except InputError as error:
            assert store.ALIASES_FILE in error.message, offset
            continue
        assert got == expected, f"a flip at byte {offset} read as other data"


def test_a_flipped_bit_in_the_file_stats_is_a_cache_miss(tmp_path):
    folder = tmp_path / "emb"
    folder.mkdir()
    stats = {"photos/a.png": (1234, 5678, "0000000000000001")}
    store.write_file_stats(folder, stats)
    for offset in _flips(folder / store.FILES_FILE):
        assert store.read_file_stats(folder) in (stats, {}), offset  # {}: read and hash again


def test_a_flipped_bit_in_an_index_row_map_is_refused_by_name(tmp_path):
    """D7's damage: a footer byte renamed `uri` (a KeyError at every search)."""
    path = tmp_path / "rows.parquet"
    rows = {"id": ["a", "b"], "uri": ["photos/a.png", "photos/b.png"], "kind": ["image"] * 2}
    store.write_row_map(path, rows)
    for offset in _flips(path):
        try:
            got = store.read_row_map(path).take([0, 1])
        except InputError as error:
            assert "rows.parquet" in error.message, offset
            continue
        assert got == rows, f"a flip at byte {offset} read as other data"


def test_files_written_before_seals_still_read(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "old.parquet"
    pq.write_table(pa.table({"a": ["x"]}).replace_schema_metadata({"k": "v"}), path)
    assert parquet_io.read(path).column("a").to_pylist() == ["x"]
    with pytest.raises(OSError, match="fails its checksum"):
        sealed = tmp_path / "sealed.parquet"
        parquet_io.write(pa.table({"a": ["x"]}).replace_schema_metadata({"k": "v"}), sealed)
        data = sealed.read_bytes()
        at = data.rindex(b"k\x18\x01v") + 3  # the metadata value "v", in the footer
        sealed.write_bytes(data[:at] + b"w" + data[at + 1 :])
        parquet_io.read(sealed)
