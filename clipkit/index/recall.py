"""Measuring an index's recall@10 against exact search: the rows and sample queries of one
pass over the embeddings, exact neighbours from the scoring core, leave-one-out recall.

No faiss here: :mod:`clipkit.index` searches the index and compares with these.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from clipkit import score, store

RECALL_K = 10
SAMPLE_QUERIES = 500


def drop_self(found: np.ndarray, own_rows: np.ndarray | None) -> np.ndarray:
    """Top RECALL_K of each row after removing the query's own index row (if it has one)."""
    if own_rows is None:
        return found[:, :RECALL_K]
    pairs = zip(found.tolist(), own_rows.tolist(), strict=True)
    kept = [[r for r in row if r != own][:RECALL_K] for row, own in pairs]
    return np.array([row + [-1] * (RECALL_K - len(row)) for row in kept])


def measured_recall(found: np.ndarray, truth: np.ndarray) -> float | None:
    """Share of the exact neighbours found; -1 pads rows when fewer than k rows exist."""
    hits = wanted = 0
    for row_found, row_truth in zip(found.tolist(), truth.tolist(), strict=True):
        real = {r for r in row_truth if r >= 0}
        hits += len(real & set(row_found))
        wanted += len(real)
    return hits / wanted if wanted else None


def exact_neighbours(queries: QuerySet, shards: store.Shards, kind: str) -> np.ndarray:
    """(Q, RECALL_K) row numbers of each query's exact nearest rows of ``kind``, itself left out."""
    blocks = (block.vectors for block in store.iter_vectors(shards, kind))
    _, indices = score.topk_stream(torch.from_numpy(queries.vectors), blocks, RECALL_K + 1)
    return drop_self(indices.numpy(), queries.rows)


def scan(
    shards: Sequence[store.Shard], kind: str, seed: int
) -> tuple[dict[str, list[Any]], Reservoir, np.ndarray]:
    """One pass: the row map of ``kind`` (with pass-through columns), a training/query sample
    of it (up to 200,000 rows)
    and up to SAMPLE_QUERIES rows of the other kind (cross-modal queries, (Q, D))."""
    rows: dict[str, list[Any]] = {name: [] for name in store.ROW_MAP_COLUMNS}
    rng = np.random.default_rng(seed)
    sample = Reservoir(200_000, rng)
    other = Reservoir(SAMPLE_QUERIES, rng)
    for block in store.iter_vectors(shards, meta=True):
        mine = np.array([k == kind for k in block.kinds], dtype=bool)
        block.append_to(rows, np.flatnonzero(mine).tolist())
        sample.offer(block.vectors[mine])
        other.offer(block.vectors[~mine])
    return rows, sample, other.array()


class Reservoir:
    """A uniform random sample of at most ``size`` rows from a stream (Algorithm R, batched)."""

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self.size, self.rng, self.seen = size, rng, 0
        self.rows: list[np.ndarray] = []
        self.numbers: list[int] = []  # each kept row's position in the stream

    def offer(self, block: np.ndarray) -> None:
        for row in block:
            # Copies: a view would keep its whole block (a shard batch) alive.
            if len(self.rows) < self.size:
                self.rows.append(row.copy())
                self.numbers.append(self.seen)
            else:
                slot = int(self.rng.integers(0, self.seen + 1))
                if slot < self.size:
                    self.rows[slot], self.numbers[slot] = row.copy(), self.seen
            self.seen += 1

    def array(self) -> np.ndarray:
        return np.stack(self.rows).astype(np.float32) if self.rows else np.zeros((0, 0), "f4")


@dataclass(frozen=True)
class QuerySet:
    """Sample queries; ``rows`` holds each query's own index row (leave-one-out), or None."""

    vectors: np.ndarray
    rows: np.ndarray | None = None


def query_sets(reservoir: Reservoir, other: np.ndarray, seed: int) -> dict[str, QuerySet]:
    """SAMPLE_QUERIES same-kind queries (with their own rows) and the cross-modal ones."""
    pick = np.random.default_rng(seed + 1).permutation(len(reservoir.rows))[:SAMPLE_QUERIES]
    same = QuerySet(
        np.ascontiguousarray(reservoir.array()[pick]) if len(pick) else np.zeros((0, 0), "f4"),
        np.asarray(reservoir.numbers, dtype=np.int64)[pick],
    )
    return {"same_kind": same, "cross_modal": QuerySet(other)}
