"""Benchmark index and search against faiss used directly, on the same data in the same run.

1. Exact search on N x 512 unit vectors: clipkit's flat index and ``--embeddings`` (streaming
   over Parquet shards) against faiss ``IndexFlatIP``: queries/s and identical results.
2. Approximate search on clustered unit vectors (a mixture of Gaussian clusters on the sphere):
   the auto index's build time, peak memory, recall@10 and queries/s against flat search.
3. End to end: wall time of ``clipkit search "text"`` on a 100k-row index of clipkit-tiny.

Usage:
    python benchmarks/bench_search.py [--ann-rows 1000000] [--exact-rows 200000]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import machine, write_results


def clustered(rows: int, dim: int, clusters: int, seed: int = 0, *, points_seed=None):
    """Unit vectors around ``clusters`` centres fixed by ``seed``; ``points_seed`` draws fresh
    points (e.g. held-out queries) from the same mixture."""
    centres = np.random.default_rng(seed).standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rng = np.random.default_rng(seed if points_seed is None else points_seed)
    out = np.empty((rows, dim), dtype=np.float32)
    for start in range(0, rows, 100_000):
        n = min(100_000, rows - start)
        labels = rng.integers(0, clusters, n)
        noise = rng.standard_normal((n, dim)).astype(np.float32) * (0.6 / np.sqrt(dim))
        block = centres[labels] + noise
        out[start : start + n] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def write_folder(folder: Path, vectors: np.ndarray, fingerprint: str, spec: str) -> None:
    from clipkit import store

    stamp = store.ModelStamp(spec, fingerprint, vectors.shape[1])
    for shard, start in enumerate(range(0, len(vectors), 100_000)):
        block = vectors[start : start + 100_000]
        ids = [f"{i:010d}" for i in range(start, start + len(block))]
        rows = {
            "id": ids,
            "uri": [f"item/{i}" for i in ids],
            "kind": ["image"] * len(ids),
            "text": [None] * len(ids),
        }
        store.write_shard(store.shard_path(folder, shard), rows, block, stamp)


def qps(fn, queries: int, repeats: int = 3) -> float:
    fn()
    best = min(_timed(fn) for _ in range(repeats))
    return queries / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def exact_section(args, work: Path) -> list[dict]:
    import faiss
    import torch

    from clipkit import score
    from clipkit.index import IndexConfig, build_index, load_index

    data = clustered(args.exact_rows, 512, 1000, seed=1)
    write_folder(work / "exact", data, "bench", "bench")
    build_index(
        IndexConfig(emb_dir=work / "exact", out_dir=work / "exact-index", index_type="flat")
    )
    ours = load_index(work / "exact-index", check_source=False)
    flat = faiss.IndexFlatIP(512)
    flat.add(data)
    rows = []
    for batch in (1, 16, 64, 128, 256):
        queries = clustered(batch, 512, 1000, seed=1, points_seed=100 + batch)
        _, want = flat.search(queries, 10)
        _, got_index = ours.search(queries, 10)
        blocks = lambda q=queries: score.topk_stream(  # noqa: E731
            torch.from_numpy(q), (b.vectors for b in _iter(work / "exact")), 10
        )
        _, got_stream = blocks()
        row = {
            "queries": batch,
            "faiss_flat_qps": qps(lambda q=queries: flat.search(q, 10), batch),
            "clipkit_index_qps": qps(lambda q=queries: ours.search(q, 10), batch),
            "clipkit_embeddings_qps": qps(blocks, batch, repeats=1),
            "index_same_ids": float((got_index == want).mean()),
            "embeddings_same_ids": float((got_stream.numpy() == want).mean()),
        }
        rows.append(row)
        print(
            f"  exact Q={batch:>4}: faiss flat {row['faiss_flat_qps']:9.1f} q/s, clipkit index "
            f"{row['clipkit_index_qps']:9.1f} q/s (same ids {row['index_same_ids']:.4f}), "
            f"--embeddings (reads shards) {row['clipkit_embeddings_qps']:8.2f} q/s "
            f"(same ids {row['embeddings_same_ids']:.4f})"
        )
    return rows


def _iter(folder: Path):
    from clipkit import store

    return store.iter_vectors(folder)


def ann_section(args, work: Path) -> dict:
    data = clustered(args.ann_rows, 512, args.clusters)
    write_folder(work / "ann", data, "bench", "bench")
    del data
    command = [sys.executable, __file__, "--build-only", str(work / "ann"), str(work / "ann-index")]
    start = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    build_wall = time.perf_counter() - start
    build = json.loads(out.stdout.strip().splitlines()[-1])
    import faiss

    from clipkit.index import load_index

    loaded = load_index(work / "ann-index", check_source=False)
    vectors = np.concatenate([b.vectors for b in _iter(work / "ann")])
    flat = faiss.IndexFlatIP(512)
    flat.add(vectors)
    queries = clustered(256, 512, args.clusters, seed=0, points_seed=3)  # held out, same mixture
    _, truth = flat.search(queries, 10)
    _, found = loaded.search(queries, 10)
    recall = float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)]))
    result = {
        **build,
        "build_wall_seconds": build_wall,
        "fresh_query_recall_at_10": recall,
        "ann_qps": qps(lambda: loaded.search(queries, 10), len(queries)),
        "flat_qps": qps(lambda: flat.search(queries, 10), len(queries)),
    }
    result["speedup"] = result["ann_qps"] / result["flat_qps"]
    print(
        f"  ANN {args.ann_rows} x 512 ({args.clusters} clusters): {build['factory']} "
        f"{build['params']}, build {build_wall:.1f} s, peak RSS {build['peak_rss_gib']:.2f} GiB; "
        f"recall@10 recorded {build['recall']}, on fresh queries {recall:.3f}; "
        f"{result['ann_qps']:.0f} q/s vs flat {result['flat_qps']:.0f} q/s "
        f"(x{result['speedup']:.1f})"
    )
    return result


def build_only(emb_dir: str, out_dir: str) -> None:
    from clipkit.index import IndexConfig, build_index

    result = build_index(IndexConfig(emb_dir=Path(emb_dir), out_dir=Path(out_dir)))
    info = result.info
    print(
        json.dumps(
            {
                "factory": info.factory,
                "params": info.params,
                "recall": info.recall_at_10,
                "build_seconds": info.build_seconds,
                "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            }
        )
    )


def end_to_end_section(work: Path) -> dict:
    from clipkit.index import IndexConfig, build_index
    from clipkit.models import load_model

    encoder = load_model("clipkit-tiny:random", device="cpu")
    data = clustered(100_000, encoder.embed_dim, 500, seed=4)
    write_folder(work / "e2e", data, encoder.fingerprint, encoder.spec)
    build_index(IndexConfig(emb_dir=work / "e2e", out_dir=work / "e2e-index"))
    command = [
        sys.executable,
        "-m",
        "clipkit",
        "search",
        "a photo of a dog",
        "--index",
        str(work / "e2e-index"),
        "-k",
        "10",
        "--device",
        "cpu",
        "-f",
        "json",
    ]
    times = [
        _timed(lambda: subprocess.run(command, check=True, capture_output=True)) for _ in range(3)
    ]
    imports = _timed(
        lambda: subprocess.run(
            [sys.executable, "-c", "import clipkit.search, clipkit.index"], check=True
        )
    )
    result = {"rows": 100_000, "wall_seconds_best": min(times), "import_seconds": imports}
    print(
        f"  end to end: clipkit search on a 100k-row clipkit-tiny index: {min(times):.2f} s "
        f"(of which importing torch/open_clip/faiss: {imports:.2f} s)"
    )
    return result


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--build-only":
        build_only(sys.argv[2], sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ann-rows", type=int, default=1_000_000)
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--exact-rows", type=int, default=200_000)
    parser.add_argument(
        "--only",
        choices=["exact", "ann", "end_to_end"],
        nargs="*",
        default=["exact", "ann", "end_to_end"],
    )
    parser.add_argument(
        "--json", type=Path, default=Path(__file__).parent / "results" / "bench_search.json"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-search-"))
    results = {"machine": machine()}
    try:
        sections = {
            "exact": lambda: exact_section(args, work),
            "ann": lambda: ann_section(args, work),
            "end_to_end": lambda: end_to_end_section(work),
        }
        for name in args.only:
            print(f"{name.replace('_', ' ')}:")
            results[name] = sections[name]()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_results(args.json, results)


if __name__ == "__main__":
    main()
