"""Benchmark ``clipkit search`` (or ``zeroshot``, ``audit`` of an embeddings folder) as a user
runs it: a whole process, cold interpreter (warm page cache, bytecode cached), ``--runtime
torch`` against ``--runtime onnx``, alternating.

The embeddings folder holds ROWS random unit vectors stamped with the model's identity (the
cost does not depend on what the vectors mean), indexed as ``clipkit index`` does it; for
``audit`` it holds PAIRS image rows each with its caption's text row. The model's ONNX export
sits in a cache of the benchmark's own. Each run reports its wall time, peak RSS, and for a
search where the time went (imports, model load, query encoding, search), measured inside the
process. Writes JSON to benchmarks/results/.

    python benchmarks/bench_runtime.py --model clipkit-tiny:random --rows 100000 --repeats 5
    python benchmarks/bench_runtime.py --command zeroshot --rows 10000
    python benchmarks/bench_runtime.py --command audit --pairs 2000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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
def timed(name, function):
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            marks[name] = marks.get(name, 0.0) + time.perf_counter() - t
    return wrapper
if sys.argv[1] == "embed":  # the image phase alone: throughput without the start-up
    import clipkit.embed.steps as embed_steps
    embed_steps.embed_images = timed("images", embed_steps.embed_images)
if sys.argv[1] == "search":  # where a search's time goes
    import clipkit.search.run as run
    run._encoder = timed("model_load", run._encoder)
    run._query_vectors = timed("query_encode", run._query_vectors)
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
real_exit, main_process = os._exit, os.getpid()
def reported_exit(code):  # the CLI ends a search with os._exit, skipping the teardown
    if os.getpid() == main_process:  # forked decode workers end with os._exit too
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


def build(folder: Path, model: str, rows: int, pairs: int = 0) -> Path:
    """An embeddings folder of ``rows`` random unit vectors with the model's stamp, its index,
    a folder of ``pairs`` image and caption rows (``folder/pairs``, when asked for), and the
    model's export in ``folder/cache``; returns the index folder."""
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
    if pairs:
        images = rng.standard_normal((pairs, dim)).astype(np.float32)
        texts = images + rng.standard_normal((pairs, dim)).astype(np.float32)
        block = np.concatenate([images, texts])
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        columns = {
            "id": [f"{i:012x}" for i in range(2 * pairs)],
            "uri": [f"img/{i}.jpg" for i in range(pairs)] + [f"img/{i}.txt" for i in range(pairs)],
            "kind": ["image"] * pairs + ["text"] * pairs,
            "text": [None] * pairs + [f"a photo of thing number {i}" for i in range(pairs)],
        }
        store.write_shard(store.shard_path(folder / "pairs", 0), columns, block, stamp)
    os.environ["CLIPKIT_ONNX_CACHE"] = str(folder / "cache")
    export_onnx(encoder, cached_export(encoder.fingerprint))
    return folder / "idx"


def run_once(arguments: list[str], runtime: str, cache: Path) -> dict:
    """One ``clipkit ARGUMENTS --runtime RUNTIME`` process: its wall time and the probe's marks."""
    env = {**os.environ, "CLIPKIT_ONNX_CACHE": str(cache)}
    # As a user's Python runs it: with bytecode cached (the warm-up run writes it). This
    # workplace sets PYTHONDONTWRITEBYTECODE, which recompiles an editable install every run.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    command = [sys.executable, "-c", PROBE, *arguments, "--runtime", runtime]
    if arguments[0] == "embed":  # into an empty folder, so that every image is embedded
        shutil.rmtree(arguments[arguments.index("-o") + 1], ignore_errors=True)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{arguments[0]} failed ({runtime}):\n{done.stderr}")
    # The figures may share their line with what a progress bar left on stderr
    start = done.stderr.index("FIGURES ") + len("FIGURES ")
    figures, _ = json.JSONDecoder().raw_decode(done.stderr[start:])
    return {"wall_s": wall, **figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--command", choices=("search", "zeroshot", "audit", "embed"), default="search"
    )
    parser.add_argument("--model", default="clipkit-tiny:random")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--pairs", type=int, default=2_000, help="caption pairs, for audit")
    parser.add_argument("--images", type=int, default=300, help="JPEGs (320 x 240), for embed")
    parser.add_argument("--workers", type=int, default=2, help="decode workers, for embed")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--image", action="store_true", help="an image query, not a text one")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-runtime-") as tmp:
        folder = Path(tmp)
        rows = 1_000 if args.command == "embed" else args.rows  # embed needs only the export
        index = build(folder, args.model, rows, args.pairs if args.command == "audit" else 0)
        if args.command == "embed":
            from bench_embed import make_jpegs

            make_jpegs(folder / "jpegs", args.images, (320, 240))
        arguments = _arguments(args, folder, index)
        runs: dict[str, list[dict]] = {"torch": [], "onnx": []}
        for runtime in runs:  # warm the page cache, and write the bytecode
            run_once(arguments, runtime, folder / "cache")
        for _ in range(args.repeats):
            for runtime in runs:
                runs[runtime].append(run_once(arguments, runtime, folder / "cache"))
    summary = {}
    what = {
        "search": f"{args.rows:,} rows, {'image' if args.image else 'text'} query",
        "zeroshot": f"{args.rows:,} image rows, 10 labels",
        "audit": f"{args.pairs:,} pairs",
        "embed": f"{args.images} JPEGs of 320 x 240, {args.workers} decode workers",
    }[args.command]
    print(f"clipkit {args.command}, {args.model}, {what}, {args.repeats} runs each")
    # A search's breakdown, embed's image throughput (the image phase alone, from the probe)
    columns = {
        "search": ("cli_import", "model_load", "query_encode", "search"),
        "embed": ("images_per_s",),
    }.get(args.command, ())
    print(
        f"{'runtime':8} {'best s':>7} {'median s':>9} {'peak MB':>8} "
        + " ".join(f"{k:>12}" for k in columns)
    )
    for runtime, figures in runs.items():
        for f in figures:
            if "images" in f:
                f["images_per_s"] = args.images / f["images"]
        walls = [f["wall_s"] for f in figures]
        keys = ("cli_import", "index_load", "model_load", "query_encode", "search", "images_per_s")
        medians = {
            key: statistics.median(f.get(key, 0.0) for f in figures)
            for key in (*keys, "peak_rss_mb")
        }
        summary[runtime] = {
            "best_s": min(walls),
            "median_s": statistics.median(walls),
            "torch_loaded": figures[0]["torch_loaded"],
            **medians,
        }
        print(
            f"{runtime:8} {min(walls):7.2f} {statistics.median(walls):9.2f} "
            f"{medians['peak_rss_mb']:8.0f} " + " ".join(f"{medians[k]:12.3f}" for k in columns)
        )
    kind = ("image" if args.image else "text") if args.command == "search" else args.command
    name = f"bench_runtime_{args.model.split(':')[0]}_{kind}.json"
    write_results(
        args.json or Path(__file__).parent / "results" / name,
        {
            "machine": machine(),
            "args": {k: str(v) for k, v in vars(args).items()},
            "summary": summary,
            "runs": runs,
        },
    )


def _arguments(args: argparse.Namespace, folder: Path, index: Path) -> list[str]:
    """The measured command line, without --runtime."""
    if args.command == "zeroshot":
        labels = "cat,dog,car,tree,house,boat,bird,flower,cloud,person"
        predictions = str(folder / "predictions.parquet")
        return ["zeroshot", str(folder / "emb"), "--labels", labels, "-o", predictions]
    if args.command == "audit":
        return ["audit", str(folder / "pairs"), "-o", str(folder / "audit.parquet")]
    if args.command == "embed":  # a new folder each run (run_once removes it): all are embedded
        out = str(folder / "embed-out")
        return [
            "embed",
            str(folder / "jpegs"),
            "-o",
            out,
            "-m",
            args.model,
            "--workers",
            str(args.workers),
        ]
    if args.image:
        from PIL import Image

        Image.new("RGB", (320, 240), (200, 40, 40)).save(folder / "query.png")
        query = ["--image", str(folder / "query.png")]
    else:
        query = ["an emoji of cloud"]
    return ["search", *query, "--index", str(index), "-k", "10"]


if __name__ == "__main__":
    main()
