"""Benchmark ``clipkit serve`` under load, against one ``clipkit search`` process per query
and against the raw work (query encoding + index search in one Python loop), same index, same
queries, same run (issue #26).

The index holds ROWS random unit vectors stamped with the model's identity (the cost does not
depend on what they mean), with the model's ONNX export in a cache of the benchmark's own, as
``clipkit index`` leaves it. The server is the real console script on a loopback port; a
bounded load generator (threads with keep-alive connections, loopback only) sends a fixed
number of ``GET /api/search?q=…&k=10`` at concurrency 1, 8 and 32: queries/s, p50/p99
latency, errors, and the server's peak RSS; with one server process, then with two
(``--processes``); medians over ``--rounds`` rounds, each against its own raw work. Writes
JSON to benchmarks/results/.

    python benchmarks/bench_serve.py --model clipkit-tiny:random --rows 100000
    python benchmarks/bench_serve.py --model ViT-B-32:random --rows 100000 --requests 100
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

from bench_runtime import build
from common import machine, write_results

LEVELS = (1, 8, 32)  # concurrent connections
WORDS = ["red", "blue", "small", "large", "circle", "square", "dog", "cat", "beach", "car"]


def queries(count: int) -> list[str]:
    """Distinct queries, so that no cache along the way answers twice."""
    return [f"a {WORDS[i % 10]} {WORDS[(i // 10) % 10]} number {i}" for i in range(count)]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def load(port: int, texts: list[str], concurrency: int) -> dict:
    """Send every query once over ``concurrency`` keep-alive connections."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    chunks = [texts[i::concurrency] for i in range(concurrency)]

    def worker(mine: list[str]) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for text in mine:
            path = "/api/search?" + urllib.parse.urlencode({"q": text, "k": 10})
            started = time.perf_counter()
            try:
                connection.request("GET", path)
                answer = connection.getresponse()
                body = answer.read()
                ok = answer.status == 200 and b'"hits"' in body
            except OSError:
                ok = False
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                errors[0] += not ok
        connection.close()

    threads = [threading.Thread(target=worker, args=(chunk,)) for chunk in chunks]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "concurrency": concurrency,
        "requests": len(texts),
        "queries_per_s": len(texts) / wall,
        "p50_ms": 1000 * ordered[len(ordered) // 2],
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "errors": errors[0],
    }


def raw_work(index_dir: Path, texts: list[str], passes: int = 1) -> dict:
    """Encoding and search in one loop in this process, on the runtime the server uses; the
    fastest of ``passes`` passes (the fastest raw work makes the server's overhead look its
    largest)."""
    from clipkit.index.load import load_index
    from clipkit.models.runtime import as_numpy, load_matching_encoder
    from clipkit.search.run import combine, search_index

    loaded = load_index(index_dir)
    encoder, runtime = load_matching_encoder(loaded.info.model, loaded.info.fingerprint)
    for text in texts[:5]:  # warm-up
        search_index(loaded, combine(as_numpy(encoder.encode_texts([text])), [1.0]), 10, [text])
    times = []
    for _ in range(passes):
        started = time.perf_counter()
        for text in texts:
            vectors = combine(as_numpy(encoder.encode_texts([text])), [1.0])
            search_index(loaded, vectors, 10, [text])
        times.append((time.perf_counter() - started) / len(texts))
    seconds = min(times)
    return {
        "ms_per_query": 1000 * seconds,
        "queries_per_s": 1 / seconds,
        "runtime": runtime.runtime,
        "passes_ms": [1000 * one for one in times],
    }


def one_process_per_query(index_dir: Path, texts: list[str]) -> dict:
    times = []
    for text in texts:
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "clipkit", "search", text, "--index", str(index_dir)],
            check=True, capture_output=True,
        )  # fmt: skip
        times.append(time.perf_counter() - started)
    return {"runs": len(times), "median_s": statistics.median(times)}


def peak_rss_mb(pid: int, children: bool = False) -> float:
    """Peak resident memory of a process (and, with ``children``, of its worker processes
    too, each at its own peak)."""
    pids = [pid]
    if children:
        listed = subprocess.run(
            ["ps", "--ppid", str(pid), "-ww", "-o", "pid=,args="], capture_output=True, text=True
        ).stdout
        workers = [line for line in listed.splitlines() if "multiprocessing-fork" in line]
        pids += [int(line.split()[0]) for line in workers]
    total = 0.0
    for one in pids:
        for line in Path(f"/proc/{one}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1]) / 1024
    return total


def serve_levels(index_dir: Path, texts: list[str], requests: int, workers: int) -> dict:
    """Start the real server, send ``requests`` queries at each concurrency, stop it."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "clipkit", "serve", "--index", str(index_dir), "--port",
         str(port), "--processes", str(workers)],
        stderr=subprocess.PIPE, text=True, env=os.environ.copy(),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(server.communicate()[1]) from None
                time.sleep(0.2)
        load(port, texts[-50:], 4)  # warm-up
        levels = []
        for n, concurrency in enumerate(LEVELS):
            batch = texts[n * requests : (n + 1) * requests]
            levels.append({"workers": workers, **load(port, batch, concurrency)})
        return {"levels": levels, "peak_rss_mb": peak_rss_mb(server.pid, children=True)}
    finally:
        server.terminate()
        server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="clipkit-tiny:random")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=400, help="per concurrency level")
    parser.add_argument("--processes", type=int, default=5, help="clipkit search runs")
    parser.add_argument("--workers", default="1,2", help="server processes to try, in turn")
    parser.add_argument("--rounds", type=int, default=3, help="medians over this many")
    args = parser.parse_args()
    results: dict = {"machine": machine(), "model": args.model, "rows": args.rows}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        index_dir = build(Path(tmp), args.model, args.rows)  # sets CLIPKIT_ONNX_CACHE
        texts = queries(len(LEVELS) * args.requests + 50)
        results["process_per_query"] = one_process_per_query(index_dir, texts[: args.processes])
        # Rounds of (raw work, then the server at each level): this shared machine's speed
        # drifts by 20 % from minute to minute, so each round's server figures are compared
        # with the raw work of the same round, and medians over the rounds are reported.
        results["rounds"] = []
        for _ in range(args.rounds):
            raw = raw_work(index_dir, texts[: args.requests])
            levels, memory = [], {}
            for workers in (int(n) for n in args.workers.split(",")):
                served = serve_levels(index_dir, texts, args.requests, workers)
                levels += served["levels"]
                memory[workers] = served["peak_rss_mb"]
            for level in levels:
                level["overhead_vs_raw"] = (1000 / level["queries_per_s"]) / raw["ms_per_query"] - 1
            results["rounds"].append({"raw": raw, "server": levels, "peak_rss_mb": memory})
    results.update(medians(results["rounds"]))
    print(json.dumps({k: v for k, v in results.items() if k not in ("machine", "rounds")},
                     indent=2))  # fmt: skip
    name = "serve-" + args.model.split(":")[0].lower() + ".json"
    write_results(Path(__file__).parent / "results" / name, results)


def medians(rounds: list[dict]) -> dict:
    """Each figure's median over the rounds (errors summed, memory at its largest)."""
    raw = statistics.median(r["raw"]["ms_per_query"] for r in rounds)
    server = []
    for n, first in enumerate(rounds[0]["server"]):
        same = [r["server"][n] for r in rounds]
        row = {key: first[key] for key in ("workers", "concurrency", "requests")}
        for key in ("queries_per_s", "p50_ms", "p99_ms", "overhead_vs_raw"):
            row[key] = statistics.median(level[key] for level in same)
        row["errors"] = sum(level["errors"] for level in same)
        server.append(row)
    memory = {
        f"server_peak_rss_mb_{workers}_workers": max(r["peak_rss_mb"][workers] for r in rounds)
        for workers in rounds[0]["peak_rss_mb"]
    }
    return {"raw": {"ms_per_query": raw, "queries_per_s": 1000 / raw}, "server": server, **memory}


if __name__ == "__main__":
    main()
