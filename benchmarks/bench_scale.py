"""Scale-out (issue #38): ``clipkit embed`` with ``--engine local`` against ``--engine ray`` on
the same generated images, same run: images/s of each (the Ray run includes starting Ray and
its actors, as a user's command does), and whether the two folders hold the same rows.

The index half (parts merged, ``--on-disk``) is still to come.

    python benchmarks/bench_scale.py --images 20000
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine, write_results

MODEL = "clipkit-tiny:random"


def images(folder: Path, count: int) -> None:
    from clipkit.inputs.synthetic import write_captioned_shapes

    write_captioned_shapes(folder, count, seed=0)
    for caption in folder.glob("*.txt"):  # images only: the figure is images/s
        caption.unlink()


def embed(source: Path, out: Path, shard_rows: int, *engine: str) -> float:
    """Seconds of one ``clipkit embed`` process, start to end."""
    script = Path(sys.executable).parent / "clipkit"
    started = time.perf_counter()
    subprocess.run(
        [str(script), "embed", str(source), "-o", str(out), "-m", MODEL, "--device", "cpu",
         "--runtime", "torch", "--shard-rows", str(shard_rows), *engine],
        check=True, capture_output=True,
    )  # fmt: skip
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000)
    # units of work are shards: 20,000 images in 20 of them keep every actor busy
    parser.add_argument("--shard-rows", type=int, default=1000)
    args = parser.parse_args()
    from clipkit import store

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        images(root / "images", args.images)
        local_s = embed(root / "images", root / "local", args.shard_rows)
        ray_s = embed(root / "images", root / "ray", args.shard_rows, "--engine", "ray")
        same = store.read_existing(root / "local").ids == store.read_existing(root / "ray").ids
    results = {
        "machine": machine(),
        "images": args.images,
        "model": MODEL,
        "shard_rows": args.shard_rows,
        "local": {"seconds": round(local_s, 1), "images_per_s": round(args.images / local_s, 1)},
        "ray": {"seconds": round(ray_s, 1), "images_per_s": round(args.images / ray_s, 1)},
        "ray_over_local": round(local_s / ray_s, 3),
        "same_rows": same,
    }
    print(results)
    write_results(Path(__file__).parent / "results" / "scale.json", results)


if __name__ == "__main__":
    main()
