"""Exact top-k by inner product in NumPy, for the search paths that must not import torch.

The same answers as the scoring core's ``score.topk`` / ``score.topk_stream`` (ties go to the
lower row), tested against them; those stay the implementation for everything that already
runs on torch (index recall, training, zero-shot on a GPU).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# Keys scored at once: a (Q, CHUNK) float32 score block, 16 MB for 64 queries.
CHUNK = 65_536
# Below this many queries, scores are computed keys-first (see _scores).
FEW_QUERIES = 16
# Fewer keys than this per thread are not worth a thread (exact_topk_parallel).
MIN_PART_ROWS = 16_384


def exact_topk(queries: np.ndarray, keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product, ties to the lower row.

    Args:
        queries: (Q, D) float32.
        keys: (N, D) float32, N >= k >= 1.

    Returns:
        Scores and row numbers, (Q, k) each, best first.
    """
    scores = _scores(queries, keys)
    candidates = np.argpartition(scores, -k, axis=1)[:, -k:]  # no negated (Q, N) copy
    chosen = np.take_along_axis(scores, candidates, axis=1)
    # argpartition picks arbitrarily among the scores tied with the k-th best; the rows where
    # such a tie crosses the cut are redone with a stable sort, which keeps the lower rows.
    tied = (scores >= chosen.min(axis=1, keepdims=True)).sum(axis=1) > k
    if tied.any():
        stable = np.argsort(-scores[tied], axis=1, kind="stable")[:, :k]
        candidates[tied] = stable
        chosen[tied] = np.take_along_axis(scores[tied], stable, axis=1)
    order = np.lexsort((candidates, -chosen), axis=1)
    return np.take_along_axis(chosen, order, 1), np.take_along_axis(candidates, order, 1)


def _scores(queries: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """(Q, N) inner products, computed the way OpenBLAS does fastest for this Q.

    ``queries @ keys.T`` for a few queries is OpenBLAS's slow case: against 100,000 x 128
    keys on one core, top-k of 2 queries took 9.8 ms and of 8 queries 16.3 ms; keys first
    (``keys @ queries.T``, then a contiguous transpose) 4.8 and 11.3 ms. From about 16
    queries on the transposed copy costs more than it saves. A lone query is a
    matrix-vector product either way. ``clipkit serve`` batches concurrent queries into this.
    """
    if 1 < len(queries) < FEW_QUERIES:
        return np.ascontiguousarray((keys @ queries.T).T)
    return queries @ keys.T


def exact_topk_stream(
    queries: np.ndarray, key_blocks: Iterable[np.ndarray], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k over keys that arrive in blocks (e.g. Parquet shards), in bounded memory.

    Args:
        queries: (Q, D) float32.
        key_blocks: (N_i, D) float32 arrays; rows are numbered across blocks in arrival order.
        k: results per query, >= 1.

    Returns:
        Scores (Q, min(k, N)) float32 and row numbers (Q, min(k, N)) int64, best first; ties
        go to the lower row. (Q, 0) each when no key arrives.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    best = (np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64))
    seen = 0
    for block in key_blocks:
        for start in range(0, len(block), CHUNK):
            part = np.ascontiguousarray(block[start : start + CHUNK], dtype=np.float32)
            scores, rows = exact_topk(queries, part, min(k, len(part)))
            best = _merge([best, (scores, rows + seen + start)], k)
        seen += len(block)
    return best


def exact_topk_parallel(
    queries: np.ndarray, keys: np.ndarray, k: int, parts: int
) -> tuple[np.ndarray, np.ndarray]:
    """``exact_topk`` with the keys cut into ``parts`` runs of rows scored at once in
    threads (NumPy lets go of the interpreter lock in the product and the partition), for
    callers whose math libraries run one thread each (``clipkit serve``). Same answers."""
    if parts < 2 or len(keys) < parts * MIN_PART_ROWS:
        return exact_topk(queries, keys, k)
    bounds = np.linspace(0, len(keys), parts + 1).astype(int).tolist()
    pool = _pool(parts)
    pending = [
        (start, pool.submit(exact_topk, queries, keys[start:end], min(k, end - start)))
        for start, end in itertools.pairwise(bounds)
    ]
    answers = [(start, *future.result()) for start, future in pending]
    return _merge([(scores, rows + start) for start, scores, rows in answers], k)


def _merge(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best k of several (Q, k_i) top-k answers over disjoint rows, ties to the lower
    row."""
    scores = np.concatenate([part[0] for part in parts], axis=1)
    rows = np.concatenate([part[1] for part in parts], axis=1)
    order = np.lexsort((rows, -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)


@functools.cache
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="clipkit-topk")
