"""Benchmark ``clipkit search`` as a user runs it: a whole process, cold interpreter (warm page
cache), ``--runtime torch`` against ``--runtime onnx``, alternating, on one index.

The index holds ROWS random unit vectors stamped with the model's identity (search cost does
not depend on what the vectors mean), built as ``clipkit index`` builds it; the model's ONNX
export sits in a cache of the benchmark's own. Each run reports its wall time, peak RSS, and
where the time went (imports, model load, query encoding, search, output), measured inside the
process. Writes JSON to benchmarks/results/.

    python benchmarks/bench_runtime.py --model clipkit-tiny:random --rows 100000 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine, write_results

# Runs inside the measured process: the CLI as a user runs it, plus timing marks.
PROBE = r"""
import json, sys, time
started = time.perf_counter()
marks = {}
import clipkit.cli
marks["cli_import"] = time.perf_counter() - started
import clipkit.search.run as run
real_encoder, real_vectors = run._encoder, run._query_vectors
def timed(name, function):
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            marks[name] = marks.get(name, 0.0) + time.perf_counter() - t
    return wrapper
run._encoder = timed("model_load", real_encoder)
run._query_vectors = timed("query_encode", real_vectors)
from clipkit.index import load as index_load
index_load.LoadedIndex.search = timed("search", index_load.LoadedIndex.search)
index_load.load_index = timed("index_load", index_load.load_index)
def report():
    marks["total_in_process"] = time.perf_counter() - started
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so a child would report the
    # benchmark's own peak; the high-water mark belongs to this process image.
    hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    marks["peak_rss_mb"] = int(hwm.split()[1]) / 1024
    marks["torch_loaded"] = "torch" in sys.modules
    print("FIGURES " + json.dumps(marks), file=sys.stderr)
import os
real_exit = os._exit
def reported_exit(code):  # the CLI ends a search with os._exit, skipping the teardown
    report()
    sys.stderr.flush()
    real_exit(code)
os._exit = reported_exit
sys.argv = ["clipkit", *sys.argv[1:]]
try:
    clipkit.cli.main()
except SystemExit as done:
    report()
    sys.exit(done.code)
"""


def build(folder: Path, model: str, rows: int) -> Path:
    """An embeddings folder of ``rows`` random unit vectors with the model's stamp, its index,
    and the model's export in ``folder/cache``; returns the index folder."""
    import numpy as np

    from clipkit import store
    from clipkit.index import IndexConfig, build_index
    from clipkit.models import load_model
    from clipkit.models.exported import cached_export
    from clipkit.models.onnx_export import export_onnx

    encoder = load_model(model, device="cpu")
    dim = int(encoder.encode_texts(["x"]).shape[1])
    stamp = store.ModelStamp(encoder.spec, encoder.fingerprint, dim)
    rng = np.random.default_rng(0)
    for shard, start in enumerate(range(0, rows, 50_000)):
        count = min(50_000, rows - start)
        block = rng.standard_normal((count, dim)).astype(np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        ids = [f"{i:012x}" for i in range(start, start + count)]
        columns = {
            "id": ids,
            "uri": [f"img/{i}.jpg" for i in ids],
            "kind": ["image"] * count,
            "text": [None] * count,
        }
        store.write_shard(store.shard_path(folder / "emb", shard), columns, block, stamp)
    build_index(IndexConfig(emb_dir=folder / "emb", out_dir=folder / "idx"))
    os.environ["CLIPKIT_ONNX_CACHE"] = str(folder / "cache")
    export_onnx(encoder, cached_export(encoder.fingerprint))
    return folder / "idx"


def run_once(index: Path, runtime: str, query: list[str], cache: Path) -> dict:
    env = {**os.environ, "CLIPKIT_ONNX_CACHE": str(cache)}
    # As a user's Python runs it: with bytecode cached (the warm-up run writes it). This
    # workplace sets PYTHONDONTWRITEBYTECODE, which recompiles an editable install every run.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    command = [
        sys.executable,
        "-c",
        PROBE,
        "search",
        *query,
        "--index",
        str(index),
        "-k",
        "10",
        "--runtime",
        runtime,
    ]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"search failed ({runtime}):\n{done.stderr}")
    line = next(x for x in done.stderr.splitlines() if x.startswith("FIGURES "))
    return {"wall_s": wall, **json.loads(line[len("FIGURES ") :])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="clipkit-tiny:random")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--image", action="store_true", help="an image query, not a text one")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-runtime-") as tmp:
        folder = Path(tmp)
        index = build(folder, args.model, args.rows)
        if args.image:
            from PIL import Image

            Image.new("RGB", (320, 240), (200, 40, 40)).save(folder / "query.png")
            query = ["--image", str(folder / "query.png")]
        else:
            query = ["an emoji of cloud"]
        runs: dict[str, list[dict]] = {"torch": [], "onnx": []}
        run_once(index, "torch", query, folder / "cache")  # warm the page cache
        run_once(index, "onnx", query, folder / "cache")
        for _ in range(args.repeats):
            for runtime in ("torch", "onnx"):
                runs[runtime].append(run_once(index, runtime, query, folder / "cache"))
    summary = {}
    print(
        f"{args.model}, {args.rows:,} rows, {'image' if args.image else 'text'} query, "
        f"{args.repeats} runs each"
    )
    header = f"{'runtime':8} {'best s':>7} {'median s':>9} {'peak MB':>8} " + " ".join(
        f"{k:>12}" for k in ("cli_import", "model_load", "query_encode", "search")
    )
    print(header)
    for runtime, figures in runs.items():
        walls = [f["wall_s"] for f in figures]
        medians = {
            key: statistics.median(f.get(key, 0.0) for f in figures)
            for key in (
                "cli_import",
                "index_load",
                "model_load",
                "query_encode",
                "search",
                "peak_rss_mb",
            )
        }
        summary[runtime] = {
            "best_s": min(walls),
            "median_s": statistics.median(walls),
            "torch_loaded": figures[0]["torch_loaded"],
            **medians,
        }
        print(
            f"{runtime:8} {min(walls):7.2f} {statistics.median(walls):9.2f} "
            f"{medians['peak_rss_mb']:8.0f} "
            + " ".join(
                f"{medians[k]:12.3f}"
                for k in ("cli_import", "model_load", "query_encode", "search")
            )
        )
    name = f"bench_runtime_{args.model.split(':')[0]}_{'image' if args.image else 'text'}.json"
    write_results(
        args.json or Path(__file__).parent / "results" / name,
        {
            "machine": machine(),
            "args": {k: str(v) for k, v in vars(args).items()},
            "summary": summary,
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
