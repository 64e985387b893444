"""Benchmark the memory of exact search over an embeddings folder (``clipkit search --embeddings``).

The scan streams the vectors shard by shard; what it keeps is its row map. Session 9's scan
kept every row's id, uri, kind and text as Python strings and read the hits' pass-through values
afterwards ("all rows", reproduced here from that code); clipkit now keeps the ids only (32
ASCII bytes a row) and reads the hits' rows afterwards. Each variant runs in a fresh process
on the same folder (written first by the parent: image rows with a path, a URL column and
random unit vectors) and answers the same 16 queries; the table gives each process's peak RSS
and time, and checks that both return the same hits.

``--batch-rows`` sets the rows per record batch read from a shard (both variants; default
clipkit's ``store.shards.BATCH_ROWS``), which sets the transient part of the peak.

Usage:
    python benchmarks/bench_exact_search_memory.py [--rows 1000000] [--dim 512] [--batch-rows N]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

from common import child_figures, machine, write_results

VARIANTS = ("all rows", "clipkit")
SHARD_ROWS, QUERIES, K = 100_000, 16, 10


def make_folder(folder: Path, rows: int, dim: int) -> None:
    import numpy as np

    from clipkit import store

    stamp = store.ModelStamp("bench", "fingerprint-of-a-benchmark", dim)
    rng = np.random.default_rng(0)
    for number, first in enumerate(range(0, rows, SHARD_ROWS)):
        count = min(SHARD_ROWS, rows - first)
        numbers = range(first, first + count)
        columns = {
            "id": [f"{n:032x}" for n in numbers],
            "uri": [f"/data/photos/2024/05/IMG_{n:08d}.jpg" for n in numbers],
            "kind": ["image"] * count,
            "text": [None] * count,
            "url": [f"https://example.com/images/{n:08d}.jpg" for n in numbers],
        }
        vectors = rng.standard_normal((count, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        store.write_shard(store.shard_path(folder, number), columns, vectors, stamp)


def all_rows_scan(folder: Path, queries, k: int, batch_rows: int):
    """Session 9's ``search._exact``: every row's core columns kept while scanning."""
    import torch

    from clipkit import score, store

    shards = store.snapshot(folder)
    rows: dict = {"id": [], "uri": [], "kind": [], "text": []}

    def blocks():
        for block in store.iter_vectors(shards, None, batch_rows):
            block.append_to(rows)
            yield block.vectors

    scores, found = score.topk_stream(torch.from_numpy(queries), blocks(), k)
    hits = sorted({int(r) for r in found.ravel().tolist() if r >= 0})
    from clipkit.store import read_rows_by_id  # the hits' pass-through values, as before

    values = read_rows_by_id(shards, {rows["id"][r] for r in hits})
    return [[rows["uri"][r] for r in row] for row in found.tolist()], values


def scan(variant: str, folder: Path, dim: int, batch_rows: int) -> dict:
    """In the child process: answer the queries; report the hits, peak RSS and time."""
    import functools

    import numpy as np

    from clipkit import store
    from clipkit.search.run import _exact

    store.iter_ids_and_vectors = functools.partial(
        store.iter_ids_and_vectors, batch_rows=batch_rows
    )

    rng = np.random.default_rng(1)
    queries = rng.standard_normal((QUERIES, dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    started = time.perf_counter()
    if variant == "clipkit":
        _, found, rows = _exact(folder, None, queries, K)
        uris = [[rows["uri"][r] for r in row] for row in found.tolist()]
    else:
        uris, _ = all_rows_scan(folder, queries, K, batch_rows)
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"hits": uris, "peak_rss_kib": peak_kib, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--batch-rows", type=int, default=None)
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument(
        "--json",
        type=Path,
        default=Path(__file__).parent / "results" / "bench_exact_search_memory.json",
    )
    args = parser.parse_args()
    if args.batch_rows is None:
        from clipkit.store.shards import BATCH_ROWS

        args.batch_rows = BATCH_ROWS
    if args.child:
        print(json.dumps(scan(args.child, args.folder, args.dim, args.batch_rows)))
        return

    runs, hits = [], []
    with tempfile.TemporaryDirectory() as folder:
        make_folder(Path(folder), args.rows, args.dim)
        for variant in VARIANTS:
            command = [
                sys.executable,
                __file__,
                "--child",
                variant,
                "--folder",
                folder,
                "--dim",
                str(args.dim),
                "--batch-rows",
                str(args.batch_rows),
            ]
            figures = child_figures(command)
            hits.append(figures.pop("hits"))
            runs.append({"variant": variant, **figures})
            print(
                f"{variant:>8}: {args.rows:,} rows, peak RSS "
                f"{figures['peak_rss_kib'] / 1024:5.0f} MiB, {figures['seconds']:.1f} s",
                flush=True,
            )
    assert hits[0] == hits[1], "the variants disagree"
    ratio = runs[1]["peak_rss_kib"] / runs[0]["peak_rss_kib"]
    print(f"same hits; clipkit / all rows, peak RSS: {ratio:.2f}")
    write_results(
        args.json,
        {
            "machine": machine(),
            "rows": args.rows,
            "dim": args.dim,
            "batch_rows": args.batch_rows,
            "queries": QUERIES,
            "k": K,
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
