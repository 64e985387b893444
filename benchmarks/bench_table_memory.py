"""Benchmark the memory of reading an input table: ``clipkit.inputs.sources.discover`` against rows.

``clipkit embed table.parquet`` lists one item per row (two with an image and a caption
column). Each run below is a fresh process that generates nothing: it reads the same Parquet
table (a caption, a URL and two integer columns, written first by the parent) and keeps what it
listed. "python rows" is ``to_pylist()`` with one item and one dict of pass-through cells per
row (clipkit before session 8, and what a user's script would do); "clipkit" keeps the table in
Arrow and reads the pass-through cells when a shard is written. The table gives each process's
peak RSS.

Usage:
    python benchmarks/bench_table_memory.py [--rows 1000000]
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

VARIANTS = ("python rows", "clipkit")


def make_table(path: Path, rows: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    table = pa.table(
        {
            "caption": [f"a photo of item {i} with a red car" for i in range(rows)],
            "url": [f"https://example.com/images/{i:08d}.jpg" for i in range(rows)],
            "width": rng.integers(100, 1000, rows),
            "height": rng.integers(100, 1000, rows),
        }
    )
    pq.write_table(table, path)


def listing(variant: str, path: Path) -> dict[str, float]:
    """In the child process: list the table's items and keep them; report peak RSS."""
    started = time.perf_counter()
    if variant == "clipkit":
        from clipkit.inputs.sources import SourceOptions, discover

        items = discover([str(path)], SourceOptions()).items
    else:
        import pyarrow.parquet as pq

        from clipkit.inputs.sources import Item

        items = []
        for number, row in enumerate(pq.read_table(path).to_pylist()):
            meta = {name: value for name, value in row.items() if name != "caption"}
            items.append(
                Item(uri=f"{path}#row={number}", kind="text", text=row["caption"], meta=meta)
            )
        items.sort(key=lambda item: item.uri)
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"items": len(items), "peak_rss_kib": peak_kib, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--table", type=Path, help=argparse.SUPPRESS)
    parser.add_argument(
        "--json", type=Path, default=Path(__file__).parent / "results" / "bench_table_memory.json"
    )
    args = parser.parse_args()
    if args.child:
        print(json.dumps(listing(args.child, args.table)))
        return

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        table = Path(folder) / "table.parquet"
        make_table(table, args.rows)
        for variant in VARIANTS:
            command = [sys.executable, __file__, "--child", variant, "--table", str(table)]
            figures = child_figures(command)
            rows.append({"variant": variant, **figures})
            print(
                f"{variant:>11}: {figures['items']:,} items, peak RSS "
                f"{figures['peak_rss_kib'] / 1024:5.0f} MiB, {figures['seconds']:.1f} s",
                flush=True,
            )
    ratio = rows[1]["peak_rss_kib"] / rows[0]["peak_rss_kib"]
    print(f"clipkit / python rows, peak RSS: {ratio:.2f}")
    write_results(args.json, {"machine": machine(), "rows": args.rows, "runs": rows})


if __name__ == "__main__":
    main()
