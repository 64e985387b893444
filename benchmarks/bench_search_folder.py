"""Benchmark the one-command search, ``clipkit search "text" --in FOLDER``, as a user runs it
(a whole process each time), against the three commands it replaces on the same folder.

A folder of N generated images (the quickstart's coloured shapes; their .txt captions are
ignored by ``--in``) is searched: the first time (embed, index and ONNX export into a fresh
cache), then with nothing changed (repeated: the usual case), then after adding and after
deleting a few images. In the same run, the same work by hand: ``clipkit embed``, ``clipkit
index`` (which exports too) and ``clipkit search --index``. Wall time and peak RSS of each
process (``wait4``). Writes JSON to benchmarks/results/.

    python benchmarks/bench_search_folder.py --images 1000 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine, write_results

QUERY = "a red circle"


def run(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one process."""
    started = time.perf_counter()
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{child.stderr.read().decode()}")
    return seconds, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--changed", type=int, default=10, help="images added, then deleted")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default="clipkit-tiny:random")
    args = parser.parse_args()

    from clipkit.inputs.synthetic import write_captioned_shapes

    clipkit = [sys.executable, "-m", "clipkit"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-folder-") as tmp:
        root = Path(tmp)
        photos, extra = root / "photos", root / "extra"
        write_captioned_shapes(photos, args.images, seed=0)
        write_captioned_shapes(extra, args.changed, seed=1)
        env = {
            **os.environ,
            "CLIPKIT_FOLDER_CACHE": str(root / "cache"),
            "CLIPKIT_ONNX_CACHE": str(root / "onnx"),
        }
        one = [*clipkit, "search", QUERY, "--in", str(photos), "-m", args.model]

        def record(case: str, figures: list[tuple[float, float]]) -> None:
            times = [seconds for seconds, _ in figures]
            rows.append(
                {
                    "case": case,
                    "runs": len(figures),
                    "best_s": min(times),
                    "median_s": statistics.median(times),
                    "peak_rss_mb": statistics.median(mb for _, mb in figures),
                }
            )
            print(
                f"{case:<48} best {min(times):6.2f} s  median "
                f"{statistics.median(times):6.2f} s  {rows[-1]['peak_rss_mb']:6.0f} MB"
            )

        record("--in, first search (embed, index, export)", [run(one, env)])
        record("--in, nothing changed", [run(one, env) for _ in range(args.repeats)])
        added = []
        for path in sorted(extra.glob("*.png")):
            target = photos / f"added-{path.name}"
            shutil.copy(path, target)
            added.append(target)
        record(f"--in, {args.changed} images added", [run(one, env)])
        for path in added:
            path.unlink()
        record(f"--in, {args.changed} images deleted", [run(one, env)])

        # The same by hand, into a fresh ONNX cache: the first time a user does it
        env["CLIPKIT_ONNX_CACHE"] = str(root / "onnx-by-hand")
        emb, index = root / "emb", root / "index"
        embed = [
            *clipkit,
            "embed",
            str(photos),
            "-o",
            str(emb),
            "-m",
            args.model,
            "--kind",
            "image",
        ]
        build = [*clipkit, "index", str(emb), "-o", str(index)]
        search = [*clipkit, "search", QUERY, "--index", str(index)]
        steps = [run(embed, env), run(build, env), run(search, env)]
        total = sum(seconds for seconds, _ in steps)
        record("by hand: embed + index + search", [(total, max(mb for _, mb in steps))])
        record("by hand: search --index, repeated", [run(search, env) for _ in range(args.repeats)])

    write_results(
        Path(__file__).parent / "results" / "search_folder.json",
        {"machine": machine(), "images": args.images, "model": args.model, "rows": rows},
    )


if __name__ == "__main__":
    main()
