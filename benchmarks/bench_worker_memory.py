"""Benchmark the memory decode workers add: clipkit's datasets against a plain list dataset.

A forked DataLoader worker shares the main process's pages until something writes to them,
and reading a Python object writes its reference count; a garbage collection in the worker
writes to every container it inherited. So the dataset a user would write (lists of path and
caption strings) costs each worker a copy of much of it, and more as the input grows.

Each variant runs in a fresh process for each size: it builds the dataset that ``clipkit
embed`` (``--dataset embed``: image paths, read in order) or ``clipkit train`` (``--dataset
train``: paths with two captions each, read in a shuffled order) builds, or the plain-list
equivalent, and walks it with ``--workers`` workers. The paths do not exist, so a worker does
nothing but read its share and fail: what it holds beyond its start is what the dataset costs
it. The table gives the peak of the workers' private memory (USS) summed over them, sampled
every 50 ms, and the main process's peak RSS; the growth between the sizes is the cost of
each added item.

Usage:
    python benchmarks/bench_worker_memory.py [--dataset embed|train]
        [--items 250000 1000000] [--workers 8]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

from common import child_figures, machine, write_results

VARIANTS = ("plain list", "clipkit")
RESULTS = Path(__file__).parent / "results"


def private_kib(pid: int) -> int:
    """Pages only this process holds (Private_Clean + Private_Dirty), in KiB."""
    total = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    total += int(line.split()[1])
    except OSError:
        pass  # the worker has just exited
    return total


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as listing:
            return [int(child) for child in listing.read().split()]
    except OSError:
        return []


def _plain_loader(paths: list[str], captions: list[tuple[str, ...]] | None, workers: int):
    """What a user's own loop would hold: lists of paths (and of caption tuples)."""
    from torch.utils.data import DataLoader, Dataset

    class PlainDataset(Dataset):
        def __len__(self) -> int:
            return len(paths)

        def __getitem__(self, index: int) -> tuple[str | None, str | None]:
            caption = captions[index][index % len(captions[index])] if captions else None
            try:
                with open(paths[index], "rb") as handle:
                    return handle.read(1).hex(), caption
            except OSError:
                return None, caption

    return DataLoader(
        PlainDataset(),
        batch_size=64,
        num_workers=workers,
        collate_fn=list,
        prefetch_factor=4,
        **_shuffled(len(paths), captions is not None),
    )


def _shuffled(count: int, shuffle: bool) -> dict:
    # Training visits the items in a random order (each worker touches all of them).
    import torch

    return {"sampler": torch.randperm(count).tolist()} if shuffle else {}


def _clipkit_loader(paths: list[str], captions: list[tuple[str, ...]] | None, workers: int):
    """The dataset ``clipkit embed`` (no captions) or ``clipkit train`` (captions) builds."""
    import torch
    from torch.utils.data import BatchSampler, DataLoader

    from clipkit.inputs.pairs import Pair
    from clipkit.inputs.pipeline import ImageDataset, image_batches, start_workers
    from clipkit.inputs.sources import Item
    from clipkit.train.data import PairDataset, collate_pairs

    if captions is None:
        items = [Item(uri=path, kind="image", path=path) for path in paths]
        dataset = ImageDataset(
            items, known_ids=frozenset(), preprocess=None, min_side=32, max_pixels=10**8
        )
        return (batch.samples for batch in image_batches(dataset, 64, workers, "cpu"))
    pairs = [Pair(path, caption) for path, caption in zip(paths, captions, strict=True)]
    keys = [(0, index) for index in torch.randperm(len(pairs)).tolist()]
    loader = DataLoader(
        PairDataset(pairs, None, seed=0, image_size=32),
        num_workers=workers,
        batch_sampler=BatchSampler(keys, 64, drop_last=False),
        collate_fn=collate_pairs,
        prefetch_factor=4,
    )
    return (skips for _, _, skips in start_workers(loader))


def walk(variant: str, dataset: str, items: int, workers: int) -> dict[str, float]:
    """Run in the child process: hold the items, walk them, report peak memory."""
    paths = [f"/missing/folder/{i % 1000:04d}/image_{i:09d}.jpg" for i in range(items)]
    captions = (
        [(f"a photo number {i}", f"picture {i} of a thing") for i in range(items)]
        if dataset == "train"
        else None
    )
    peak = {"workers_private_kib": 0, "main_rss_kib": 0}
    done = threading.Event()

    def sample() -> None:
        me = os.getpid()
        while not done.is_set():
            workers_now = sum(private_kib(child) for child in children(me))
            peak["workers_private_kib"] = max(peak["workers_private_kib"], workers_now)
            peak["main_rss_kib"] = max(peak["main_rss_kib"], rss_kib(me))
            time.sleep(0.05)

    watcher = threading.Thread(target=sample, daemon=True)
    started = time.perf_counter()
    watcher.start()
    make = _clipkit_loader if variant == "clipkit" else _plain_loader
    walked = sum(len(batch) for batch in make(paths, captions, workers))
    done.set()
    watcher.join()
    assert walked == items, walked
    return {**peak, "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[250_000, 1_000_000])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument(
        "--dataset",
        choices=("embed", "train"),
        default="embed",
        help="embed: image paths in order; train: paths and captions, shuffled",
    )
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(walk(args.child, args.dataset, args.items[0], args.workers)))
        return

    rows = []
    print(
        f"{args.dataset} dataset, {args.workers} workers; peak private memory of all workers "
        "together, peak RSS of the main process"
    )
    for variant in VARIANTS:
        for items in args.items:
            command = [
                sys.executable,
                "-W",
                "ignore",
                __file__,
                "--child",
                variant,
                "--dataset",
                args.dataset,
                "--items",
                str(items),
                "--workers",
                str(args.workers),
            ]
            figures = child_figures(command)
            rows.append({"variant": variant, "items": items, **figures})
            workers_mib = figures["workers_private_kib"] / 1024
            print(
                f"{variant:>10} {items:>9,} items: workers {workers_mib:6.0f} MiB, "
                f"main {figures['main_rss_kib'] / 1024:6.0f} MiB, "
                f"{figures['seconds']:5.1f} s",
                flush=True,
            )
    slopes = {}
    for variant in VARIANTS:
        first, last = [row for row in rows if row["variant"] == variant][:: len(args.items) - 1]
        extra = last["items"] - first["items"]
        slopes[variant] = {
            name: (last[key] - first[key]) * 1024 / extra / (args.workers if per_worker else 1)
            for name, key, per_worker in (
                ("worker_bytes_per_item", "workers_private_kib", True),
                ("main_bytes_per_item", "main_rss_kib", False),
            )
        }
        print(
            f"{variant:>10}: each added item costs {slopes[variant]['worker_bytes_per_item']:.1f}"
            f" B in every worker, {slopes[variant]['main_bytes_per_item']:.0f} B in the main "
            "process"
        )
    write_results(
        args.json or RESULTS / f"bench_worker_memory_{args.dataset}.json",
        {
            "machine": machine(),
            "dataset": args.dataset,
            "workers": args.workers,
            "rows": rows,
            "growth": slopes,
        },
    )


if __name__ == "__main__":
    main()
