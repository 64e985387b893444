"""Benchmark IVF-PQ training: clipkit's ``new_index`` against ``faiss.index_factory`` as is.

``index_factory`` turns on polysemous training for IVF-PQ, an annealing over each codebook's
order that only Hamming-filtered search uses; ``clipkit.index.new_index`` turns it off. Both
train on the same clustered unit vectors, then search the same held-out queries: the table
gives the training time, recall@10 against exact search, and how many result lists agree.

Usage:
    python benchmarks/bench_pq_training.py [--rows 20000] [--factory IVF282,PQ64]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import faiss
import numpy as np
from bench_search import clustered
from common import machine, write_results

from clipkit.index.build import new_index


def train_and_search(index, train: np.ndarray, queries: np.ndarray, nprobe: int):
    started = time.perf_counter()
    index.train(train)
    seconds = time.perf_counter() - started
    index.add(train)
    faiss.extract_index_ivf(index).nprobe = nprobe
    return seconds, index.search(queries, 10)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--factory", default="IVF282,PQ64")
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument(
        "--json", type=Path, default=Path(__file__).parent / "results" / "bench_pq_training.json"
    )
    args = parser.parse_args()

    vectors = clustered(args.rows, args.dim, clusters=200)
    queries = clustered(256, args.dim, clusters=200, points_seed=1)
    exact = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :10]
    plain = faiss.index_factory(args.dim, args.factory, faiss.METRIC_INNER_PRODUCT)
    runs = {"faiss index_factory": plain, "clipkit new_index": new_index(args.dim, args.factory)}
    rows, found = [], {}
    for name, index in runs.items():
        seconds, found[name] = train_and_search(index, vectors, queries, args.nprobe)
        recall = np.mean(
            [len(set(f) & set(t)) / 10 for f, t in zip(found[name], exact, strict=True)]
        )
        rows.append({"index": name, "train_seconds": seconds, "recall_at_10": float(recall)})
        print(f"{name}: train {seconds:.1f} s, recall@10 {recall:.3f}", flush=True)
    same = float(np.mean((found["faiss index_factory"] == found["clipkit new_index"]).all(1)))
    print(
        f"identical result lists: {same:.1%}; training speed-up "
        f"{rows[0]['train_seconds'] / rows[1]['train_seconds']:.1f}x"
    )
    write_results(
        args.json,
        {
            "machine": machine(),
            "rows": args.rows,
            "dim": args.dim,
            "factory": args.factory,
            "nprobe": args.nprobe,
            "results": rows,
            "identical_lists": same,
        },
    )


if __name__ == "__main__":
    main()
