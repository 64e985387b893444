"""Benchmark ``clipkit train`` against open_clip's own trainer on the same generated data.

Same built-in architecture (random init), same captioned shapes, batch size, learning rate,
weight decay, warmup, epochs and decode workers. Prints and records, for each trainer:
samples/s over the training steps (as each reports it: mean step time including data
loading), wall time of the whole command, and validation loss and recall@1/5/10 at the end.
Then peak memory (max RSS) of a GradCache run at a batch 8x larger than a plain run, against
that larger batch without GradCache. Goals (issue #6): throughput >= 1.0x, recall@5 not worse.

Needs the peer's own dependencies: pip install -e ".[dev,bench]"

Usage:
    python benchmarks/bench_train.py [--train 2000 --val 200 --epochs 3 --batch-size 64]
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine, write_results

from clipkit.inputs.synthetic import write_captioned_shapes
from clipkit.models.openclip import BUILTIN_CONFIG_DIR

PEER = """
import sys, open_clip
open_clip.add_model_config({config_dir!r})
from open_clip_train.main import main
main(sys.argv[1:])
"""


def write_csv(folder: Path, count: int, seed: int, start: int) -> Path:
    rows = write_captioned_shapes(folder, count, seed=seed, start=start)
    table = folder.with_suffix(".csv")
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filepath", "title"])
        writer.writerows([str(path), sample.caption] for path, sample in rows)
    return table


def timed(command: list[str]) -> tuple[float, int, str]:
    """Wall seconds, peak RSS (MiB) of the largest process, and stderr+stdout of a command."""
    wrapper = (
        "import resource, subprocess, sys; p = subprocess.run(sys.argv[1:]); "
        "print('MAXRSS', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
        "file=sys.stderr); sys.exit(p.returncode)"
    )
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", wrapper, *command], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stderr[-3000:]}")
    rss_kib = int(re.search(r"MAXRSS (\d+)", done.stderr).group(1))
    return seconds, rss_kib // 1024, done.stdout + done.stderr


def run_clipkit(args, train_csv: Path, val_csv: Path, out: Path) -> dict:
    command = [
        sys.executable,
        "-m",
        "clipkit",
        "train",
        str(train_csv),
        "-o",
        str(out),
        "-m",
        f"{args.model}:random",
        "--val",
        str(val_csv),
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(args.batch_size),
        "--lr",
        str(args.lr),
        "--weight-decay",
        "0.2",
        "--warmup",
        str(args.warmup),
        "--workers",
        str(args.workers),
        "--device",
        "cpu",
        "--seed",
        "0",
    ]
    seconds, rss, _ = timed(command)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last_step = [r for r in records if r["kind"] == "step"][-1]
    last_eval = [r for r in records if r["kind"] == "eval"][-1]
    return {
        "samples_per_s": last_step["samples_per_s"],
        "wall_s": seconds,
        "max_rss_mib": rss,
        "val_loss": last_eval["loss"],
        **{
            f"{d}_r{k}": last_eval[f"{d}_r{k}"]
            for d in ("image_to_text", "text_to_image")
            for k in (1, 5, 10)
        },
    }


def run_open_clip(args, train_csv: Path, val_csv: Path, logs: Path) -> dict:
    command = [
        sys.executable,
        "-c",
        PEER.format(config_dir=str(BUILTIN_CONFIG_DIR)),
        "--train-data",
        str(train_csv),
        "--val-data",
        str(val_csv),
        "--dataset-type",
        "csv",
        "--csv-separator",
        ",",
        "--csv-img-key",
        "filepath",
        "--csv-caption-key",
        "title",
        "--model",
        args.model,
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(args.batch_size),
        "--lr",
        str(args.lr),
        "--wd",
        "0.2",
        "--warmup",
        str(args.warmup),
        "--workers",
        str(args.workers),
        "--precision",
        "fp32",
        "--device",
        "cpu",
        "--seed",
        "0",
        "--logs",
        str(logs),
        "--name",
        "peer",
        "--save-frequency",
        "0",
        "--report-to",
        "",
        "--log-every-n-steps",
        "1",
    ]
    seconds, rss, output = timed(command)
    step_times = re.findall(r"Batch \(t\): ([\d.]+)", output)
    results = [
        json.loads(line)
        for line in (logs / "peer" / "checkpoints" / "results.jsonl").read_text().splitlines()
    ]
    last = results[-1]
    return {
        "samples_per_s": args.batch_size / float(step_times[-1]),
        "wall_s": seconds,
        "max_rss_mib": rss,
        "val_loss": last["clip_val_loss"],
        **{
            f"{d}_r{k}": last[f"{d}_R@{k}"]
            for d in ("image_to_text", "text_to_image")
            for k in (1, 5, 10)
        },
    }


def grad_cache_memory(args, train_csv: Path, root: Path) -> dict:
    """Peak RSS: batch B plain, batch 8B with GradCache (micro-batch B), batch 8B plain."""
    small, large = args.cache_batch, 8 * args.cache_batch
    runs = {
        "plain_b": (small, []),
        "grad_cache_8b": (large, ["--grad-cache", "--micro-batch", str(small)]),
        "plain_8b": (large, []),
    }
    figures = {}
    for name, (batch, extra) in runs.items():
        command = [
            sys.executable,
            "-m",
            "clipkit",
            "train",
            str(train_csv),
            "-o",
            str(root / f"mem-{name}"),
            "-m",
            f"{args.model}:random",
            "--steps",
            "2",
            "--batch-size",
            str(batch),
            "--val-split",
            "0",
            "--workers",
            "0",
            "--device",
            "cpu",
            *extra,
        ]
        seconds, rss, _ = timed(command)
        figures[name] = {"batch": batch, "max_rss_mib": rss, "wall_s": seconds}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="clipkit-tiny")
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--val", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cache-batch", type=int, default=128)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).with_name("results") / "train.json"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        train_csv = write_csv(root / "train", args.train, seed=0, start=0)
        val_csv = write_csv(root / "val", args.val, seed=1, start=args.train)
        peer = run_open_clip(args, train_csv, val_csv, root / "logs")
        ours = run_clipkit(args, train_csv, val_csv, root / "run")
        memory = grad_cache_memory(args, train_csv, root)
    print(f"{'':24}{'clipkit':>12}{'open_clip':>12}{'ratio':>8}")
    for key in ours:
        ratio = ours[key] / peer[key] if peer[key] else float("nan")
        print(f"{key:24}{ours[key]:12.3f}{peer[key]:12.3f}{ratio:8.2f}")
    for name, figures in memory.items():
        print(f"{name:24}batch {figures['batch']:5d}  max RSS {figures['max_rss_mib']:6d} MiB")
    write_results(
        args.out,
        {
            "machine": machine(),
            "args": {k: str(v) for k, v in vars(args).items()},
            "clipkit": ours,
            "open_clip": peer,
            "grad_cache": memory,
        },
    )


if __name__ == "__main__":
    main()
