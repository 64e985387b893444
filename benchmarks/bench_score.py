"""Benchmark the scoring core against its peers on the same data in the same run.

1. Contrastive loss forward+backward (D = 512): clipkit's tiled loss against open_clip's
   ClipLoss, each configuration in a fresh process so that peak memory growth is its own.
2. Exact top-k against faiss IndexFlatIP on N x 512 keys for several query batch sizes.

Usage:
    python benchmarks/bench_score.py                       # CPU, the sizes of the issue
    python benchmarks/bench_score.py --sizes 1024 4096     # a quick run
    python benchmarks/bench_score.py --device cuda --dtype bf16 --sizes 65536 262144

Prints tables and writes JSON (``--json``, default benchmarks/results/bench_score.json).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import common

# ClipLoss keeps about four S x S float32 matrices alive; skip it where that cannot fit.
CLIPLOSS_BYTES_PER_LOGIT = 4 * 4


def run_loss_case(impl: str, size: int, dim: int, device: str, dtype: str, repeats: int) -> dict:
    """One configuration, in this process: time and peak memory growth of forward+backward."""
    import math

    import open_clip
    import torch

    from clipkit import score

    torch.manual_seed(0)
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    a = torch.nn.functional.normalize(torch.randn(size, dim, device=device), dim=1)
    b = torch.nn.functional.normalize(torch.randn(size, dim, device=device), dim=1)
    a = a.to(torch_dtype).requires_grad_()
    b = b.to(torch_dtype).requires_grad_()
    logit_scale = torch.tensor(math.log(1 / 0.07), device=device, requires_grad=True)
    clip_loss = open_clip.ClipLoss()

    def step() -> float:
        a.grad = b.grad = logit_scale.grad = None
        if impl == "clipkit":
            loss = score.contrastive_loss(a, b, logit_scale)
        else:
            loss = clip_loss(a, b, logit_scale.exp())
        loss.backward()
        return float(loss)

    if device == "cuda":
        step()  # warm-up: Triton compiles its kernels on the first call
        a.grad = b.grad = logit_scale.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_bytes()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        value = step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    backend = score.loss_backend(device)[0] if impl == "clipkit" else "ClipLoss"
    flops = 4 * 2 * size * size * dim if impl == "clipkit" else 6 * 2 * size * size * dim
    best = min(times)
    return {
        "impl": impl,
        "backend": backend,
        "S": size,
        "D": dim,
        "device": device,
        "dtype": dtype,
        "seconds": best,
        "peak_extra_bytes": max(peak, 0),
        "loss": value,
        "tflops": flops / best / 1e12,
    }


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


def loss_table(args: argparse.Namespace) -> list[dict]:
    rows = []
    for size in args.sizes:
        for impl in ("clipkit", "cliploss"):
            needed = CLIPLOSS_BYTES_PER_LOGIT * size * size
            if impl == "cliploss" and needed > args.memory_limit_gib * 2**30:
                rows.append(
                    {"impl": impl, "S": size, "skipped": f"needs ~{needed / 2**30:.0f} GiB"}
                )
                print(f"  S={size:>6} {impl:>8}: skipped (needs ~{needed / 2**30:.0f} GiB)")
                continue
            repeats = 3 if size <= 4096 else 1
            command = [
                sys.executable,
                __file__,
                "--one-loss",
                impl,
                str(size),
                str(args.dim),
                args.device,
                args.dtype,
                str(repeats),
            ]
            out = subprocess.run(command, capture_output=True, text=True)
            if out.returncode != 0:
                rows.append({"impl": impl, "S": size, "error": out.stderr.strip()[-500:]})
                print(f"  S={size:>6} {impl:>8}: FAILED {out.stderr.strip()[-200:]}")
                continue
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(
                f"  S={size:>6} {impl:>8} ({row['backend']}): {row['seconds']:8.3f} s, "
                f"peak +{row['peak_extra_bytes'] / 2**20:9.1f} MiB, "
                f"{row['tflops']:.3f} TFLOP/s, loss {row['loss']:.4f}"
            )
    return rows


def topk_table(args: argparse.Namespace) -> list[dict]:
    import faiss
    import numpy as np
    import torch

    from clipkit import score

    rng = np.random.default_rng(0)
    keys = rng.standard_normal((args.keys, args.dim), dtype=np.float32)
    keys /= np.linalg.norm(keys, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(args.dim)
    index.add(keys)
    keys_t = torch.from_numpy(keys).to(args.device)
    rows = []
    for batch in args.query_batches:
        queries = rng.standard_normal((batch, args.dim), dtype=np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        queries_t = torch.from_numpy(queries).to(args.device)
        ours, theirs = _interleaved_best_times(
            [
                lambda q=queries_t: score.topk(q, keys_t, args.k),
                lambda q=queries: index.search(q, args.k),
            ],
            args.device,
            args.repeats,
        )
        our_scores, our_ids = score.topk(queries_t, keys_t, args.k)
        faiss_scores, faiss_ids = index.search(queries, args.k)
        same_ids = float((our_ids.cpu().numpy() == faiss_ids).mean())
        score_gap = float(np.abs(our_scores.cpu().numpy() - faiss_scores).max())
        row = {
            "queries": batch,
            "keys": args.keys,
            "clipkit_qps": batch / ours,
            "faiss_qps": batch / theirs,
            "speedup": theirs / ours,
            "same_ids": same_ids,
            "max_score_gap": score_gap,
        }
        rows.append(row)
        print(
            f"  Q={batch:>5}: clipkit {row['clipkit_qps']:10.1f} q/s, faiss "
            f"{row['faiss_qps']:10.1f} q/s, x{row['speedup']:.2f}, same ids {same_ids:.4f}, "
            f"max score gap {score_gap:.1e}"
        )
    return rows


def _interleaved_best_times(fns: list, device: str, repeats: int) -> list[float]:
    """Best wall time of each function, run in turns so that both see the same machine load."""
    import torch

    best = [float("inf")] * len(fns)
    for fn in fns:
        fn()  # warm-up
    for _ in range(repeats):
        for position, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            best[position] = min(best[position], time.perf_counter() - start)
    return best


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--one-loss":
        impl, size, dim, device, dtype, repeats = sys.argv[2:8]
        result = run_loss_case(impl, int(size), int(dim), device, dtype, int(repeats))
        print(json.dumps(result))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[1024, 4096, 16384, 65536])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--memory-limit-gib", type=float, default=16.0)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--query-batches", type=int, nargs="*", default=[1, 16, 256, 1024])
    parser.add_argument("--repeats", type=int, default=5, help="timed top-k runs of each")
    parser.add_argument("--skip-loss", action="store_true")
    parser.add_argument("--skip-topk", action="store_true")
    parser.add_argument(
        "--json", type=Path, default=Path(__file__).parent / "results" / "bench_score.json"
    )
    args = parser.parse_args()

    machine = common.machine()
    print(f"machine: {machine}")
    results: dict = {"machine": machine, "args": {k: str(v) for k, v in vars(args).items()}}
    if not args.skip_loss:
        print(f"contrastive loss, forward+backward, D={args.dim}, {args.device} {args.dtype}:")
        results["loss"] = loss_table(args)
    if not args.skip_topk:
        print(f"exact top-{args.k} over {args.keys} x {args.dim} keys ({args.device}):")
        results["topk"] = topk_table(args)
    common.write_results(args.json, results)


if __name__ == "__main__":
    main()
