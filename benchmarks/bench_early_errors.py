"""How long a mistake that needs no model takes to report, as a user types it (issue #25,
item 6), beside what it used to wait for: importing torch and open_clip.

Each case is a whole ``python -m clipkit ...`` process, timed from start to exit, median of
``--repeats`` runs after one warm-up (bytecode and page cache).

    python benchmarks/bench_early_errors.py --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine, write_results
from PIL import Image

CASES = {
    "train: missing folder": ["train", "missing", "-o", "run"],
    "train: wrong column": ["train", "t.csv", "-o", "run", "--image-column", "nope"],
    "train: --lambda 2": ["train", "t.csv", "-o", "run", "--lambda", "2"],
    "embed: bad spec": ["embed", "t.csv", "-o", "out", "-m", "hf-hub:"],
    "index: missing folder": ["index", "missing", "-o", "idx"],
    "search: missing index": ["search", "a dog", "--index", "missing"],
    "zeroshot: no labels": ["zeroshot", "imgs"],
    "audit: wrong column": ["audit", "t.csv", "--text-column", "nope"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="clipkit-early-"))
    (work / "t.csv").write_text("image,caption\na.png,a cat\n")
    (work / "imgs").mkdir()
    Image.new("RGB", (8, 8)).save(work / "imgs" / "a.png")
    figures = {
        name: _median([sys.executable, "-m", "clipkit", *arguments], work, args.repeats)
        for name, arguments in CASES.items()
    }
    heavy = [sys.executable, "-c", "import torch, open_clip"]
    figures["(import torch, open_clip)"] = _median(heavy, work, args.repeats)
    for name, seconds in figures.items():
        print(f"{name:28s} {seconds:5.2f} s")
    write_results(
        Path(__file__).parent / "results" / "bench_early_errors.json",
        {"machine": machine(), "repeats": args.repeats, "seconds": figures},
    )


def _median(command: list[str], cwd: Path, repeats: int) -> float:
    subprocess.run(command, cwd=cwd, capture_output=True)  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, cwd=cwd, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


if __name__ == "__main__":
    main()
