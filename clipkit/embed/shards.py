"""Embedding rows to numbered Parquet shards: rows are buffered as they are embedded and
written ``shard_rows`` at a time, each shard atomically under the next number of this writer's
sequence (``store.write_shard``), so that a run stopped at any moment leaves whole shards only.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clipkit import store
from clipkit.inputs.sources import Item


@dataclass
class ShardWriter:
    """Buffers rows and writes them as shards ``next_shard``, ``next_shard + shard_step``, ...

    Processes writing one folder each take their own sequence (torchrun ranks: start at
    ``rank``, step ``world size``), so no two ever write the same file.
    """

    out_dir: Path
    stamp: store.ModelStamp  # the model every row was embedded with
    next_shard: int
    shard_step: int
    shard_rows: int
    float16: bool  # store the vectors as float16 (halves the folder)
    meta_columns: list[str]  # pass-through columns, as named in the shards (column_name)
    base: str  # the folder relative uris are relative to (recorded in each shard)
    written: int = 0  # shards written
    rows: dict[str, list[Any]] = field(default_factory=dict)
    vectors: list[np.ndarray] = field(default_factory=list)

    def add(
        self,
        items: Sequence[Item],
        ids: Sequence[str],
        texts: Sequence[str | None],
        matrix: np.ndarray,
    ) -> None:
        """Buffer one row per item (``matrix``: (B, D) float32, finite, unit rows) and write
        every full shard."""
        for item, item_id, text in zip(items, ids, texts, strict=True):
            self._column("id").append(item_id)
            self._column("uri").append(item.uri)
            self._column("kind").append(item.kind)
            self._column("text").append(text)
            for name in self.meta_columns:
                value = (item.meta or {}).get(source_name(name))
                self._column(name).append(None if value is None else store.to_json(value))
        self.vectors.append(matrix)
        while sum(len(v) for v in self.vectors) >= self.shard_rows:
            self.flush(self.shard_rows)

    def flush(self, limit: int | None = None) -> None:
        """Write up to ``limit`` buffered rows (all by default) as the next shard."""
        if not self.vectors:
            return
        buffered = np.concatenate(self.vectors)
        take = len(buffered) if limit is None else min(limit, len(buffered))
        path = store.shard_path(self.out_dir, self.next_shard)
        shard = {name: values[:take] for name, values in self.rows.items()}
        store.write_shard(
            path, shard, buffered[:take], self.stamp, float16=self.float16, base=self.base
        )
        self.next_shard += self.shard_step
        self.written += 1
        self.rows = {name: values[take:] for name, values in self.rows.items()}
        self.vectors = [buffered[take:]] if take < len(buffered) else []

    def _column(self, name: str) -> list[Any]:
        return self.rows.setdefault(name, [])


class StoredMeta(Mapping[str, str]):
    """An item's pass-through values as a row stores them (column names of ours, values as
    text), read from the item's own view of its table row when asked for: a re-run over a
    million rows already present holds a million small views, not a million dicts."""

    __slots__ = ("_meta",)

    def __init__(self, meta: Mapping[str, Any]) -> None:
        self._meta = meta

    def __getitem__(self, column: str) -> str:
        value = self._meta[source_name(column)]
        if value is None:
            raise KeyError(column)
        return store.to_json(value)

    def __iter__(self) -> Iterator[str]:
        return (column_name(name) for name in self._meta if self._meta[name] is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def column_name(source: str) -> str:
    """The column a source's pass-through field gets: its own name, unless it collides with
    clipkit's own columns (then ``source_NAME``)."""
    return f"source_{source}" if source in store.CORE_COLUMNS else source


def source_name(column: str) -> str:
    """The source field a pass-through column holds (:func:`column_name` undone)."""
    prefix = "source_"
    inner = column[len(prefix) :] if column.startswith(prefix) else None
    return inner if inner in store.CORE_COLUMNS else column
