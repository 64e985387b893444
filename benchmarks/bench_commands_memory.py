"""Peak memory (and wall time) of every clipkit command, as a user runs it, so that a regression
shows (issue #24: every command that loaded a model cost about 0.9 GB before it did anything).

On generated captioned shapes (PNG files with .txt sidecars), with the built-in clipkit-tiny,
each command runs once as a whole process after one warm-up of the same command; peak RSS is
the child's ``ru_maxrss`` (what ``/usr/bin/time -f %M`` reports), wall time the process's.
Search, zeroshot, audit and embed run on both runtimes.

    python benchmarks/bench_commands_memory.py --pairs 300
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine, write_results

from clipkit.inputs.synthetic import write_captioned_shapes

MODEL = "clipkit-tiny:random"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=300)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="clipkit-memory-"))
    write_captioned_shapes(work / "data", args.pairs, seed=0)
    env = {**os.environ, "CLIPKIT_ONNX_CACHE": str(work / "cache")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as a user's Python runs: bytecode cached
    data, emb, idx, run = (str(work / name) for name in ("data", "emb", "idx", "run"))
    commands: list[tuple[str, list[str]]] = [
        ("models info", ["models", "info", MODEL]),
        ("export", ["export", "-m", MODEL]),
        ("embed (torch)", ["embed", data, "-o", emb + "-torch", "-m", MODEL, "--runtime", "torch"]),
        ("embed (onnx)", ["embed", data, "-o", emb, "-m", MODEL, "--runtime", "onnx"]),
        ("index", ["index", emb, "-o", idx]),
        ("search (torch)", ["search", "a red circle", "--index", idx, "--runtime", "torch"]),
        ("search (onnx)", ["search", "a red circle", "--index", idx, "--runtime", "onnx"]),
        (
            "zeroshot (torch)",
            ["zeroshot", emb, "--labels", "circle,square,triangle", "--runtime", "torch"],
        ),
        (
            "zeroshot (onnx)",
            ["zeroshot", emb, "--labels", "circle,square,triangle", "--runtime", "onnx"],
        ),
        ("audit (torch)", ["audit", emb, "--runtime", "torch"]),
        ("audit (onnx)", ["audit", emb, "--runtime", "onnx"]),
        ("train (2 epochs)", ["train", data, "-o", run, "-m", MODEL, "--epochs", "2"]),
    ]
    figures = {}
    for name, arguments in commands:
        if name.startswith(("embed", "train", "export", "index")):
            figures[name] = run_child(arguments, env)  # makes what later commands read
        else:
            run_child(arguments, env)  # warm-up: bytecode and page cache
            figures[name] = run_child(arguments, env)
        print(f"{name:18s} {figures[name]['peak_mib']:7.0f} MiB {figures[name]['wall_s']:6.2f} s")
    write_results(
        Path(__file__).parent / "results" / "bench_commands_memory.json",
        {"machine": machine(), "pairs": args.pairs, "model": MODEL, "commands": figures},
    )


def run_child(arguments: list[str], env: dict[str, str]) -> dict[str, float]:
    """One ``clipkit ARGUMENTS`` process: wall seconds and peak RSS (MiB, from wait4)."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "clipkit", *arguments],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert process.stderr is not None
    stderr = process.stderr.read()  # to its end, so the child is not blocked on a full pipe
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"clipkit {' '.join(arguments)} failed:\n{stderr.decode()[-2000:]}")
    return {"wall_s": wall, "peak_mib": usage.ru_maxrss / 1024}  # Linux: ru_maxrss in KiB


if __name__ == "__main__":
    main()
