"""Parquet storage: embedding shards, the side tables of an embeddings folder, input tables.

The only package that imports pyarrow. An embeddings folder holds ``part-NNNNN.parquet``
shards (:mod:`~clipkit.store.shards`) and underscore-named side tables
(:mod:`~clipkit.store.folder`); :mod:`~clipkit.store.tables` reads input tables and an index's
row map. Every file is written atomically, so a crash loses no shard.
"""

from __future__ import annotations

import pyarrow.parquet as pq  # tests make its writes fail: one module object for the package

from clipkit.store.folder import (
    ALIASES_FILE,
    FAILURES_FILE,
    FILES_FILE,
    ExistingEmbeddings,
    FileStat,
    Pruned,
    add_aliases,
    prune,
    read_aliases,
    read_existing,
    read_file_stats,
    with_aliases,
    write_failures,
    write_file_stats,
)
from clipkit.store.shards import (
    CORE_COLUMNS,
    SHARD_PATTERN,
    ModelStamp,
    Shard,
    Shards,
    VectorBlock,
    default_kind,
    iter_embeddings,
    iter_ids_and_vectors,
    iter_vectors,
    list_shards,
    no_embeddings,
    read_base,
    read_rows_by_id,
    read_stamp,
    read_vectors,
    shard_path,
    shard_signature,
    snapshot,
    to_json,
    write_shard,
)
from clipkit.store.tables import (
    InputTable,
    RowMap,
    read_row_map,
    read_table,
    table_columns,
    write_records,
    write_row_map,
)

__all__ = [
    "ALIASES_FILE",
    "CORE_COLUMNS",
    "FAILURES_FILE",
    "FILES_FILE",
    "SHARD_PATTERN",
    "ExistingEmbeddings",
    "FileStat",
    "InputTable",
    "ModelStamp",
    "Pruned",
    "RowMap",
    "Shard",
    "Shards",
    "VectorBlock",
    "add_aliases",
    "iter_embeddings",
    "iter_ids_and_vectors",
    "default_kind",
    "iter_vectors",
    "list_shards",
    "no_embeddings",
    "pq",
    "prune",
    "read_aliases",
    "read_base",
    "read_existing",
    "read_file_stats",
    "read_row_map",
    "read_rows_by_id",
    "read_stamp",
    "read_table",
    "table_columns",
    "read_vectors",
    "shard_path",
    "shard_signature",
    "snapshot",
    "to_json",
    "with_aliases",
    "write_failures",
    "write_file_stats",
    "write_records",
    "write_row_map",
    "write_shard",
]
