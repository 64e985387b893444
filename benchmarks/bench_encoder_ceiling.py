"""How close an image tower runs to this CPU's matrix-multiply rate, on torch and on ONNX Runtime.

A ViT's image tower is almost all matrix products. If torch already runs it near the rate at
which this machine multiplies matrices of the tower's shapes, no runtime can run it much faster
in the same precision: this script measures that ceiling, so that a throughput goal (issue #23:
ONNX fp32 at 1.2x torch) can be judged against what the hardware allows.

Measured in one process, same threads for both:
- the tower's floating-point operations per image (``torch.utils.flop_counter``, with PyTorch's
  fused attention path off so that its matrix products are counted);
- the GEMM rate at the tower's MLP shape (tokens x width @ width x 4 width), torch's and ONNX
  Runtime's (one ``MatMul`` graph);
- the tower alone on a batch of random images: torch against the model's ONNX export (as
  ``clipkit export`` writes it), images/s and the GFLOP/s they imply.

    python benchmarks/bench_encoder_ceiling.py --model ViT-B-32:random --batch 32
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from common import machine, write_results
from onnx import TensorProto, helper, numpy_helper
from torch.utils.flop_counter import FlopCounterMode

from clipkit.models.onnx_encoder import load_onnx
from clipkit.models.onnx_export import export_onnx
from clipkit.models.openclip import load_model


def best_rate(work, items: float, repeats: int) -> float:
    """Items per second of ``work()``, best of ``repeats`` after one warm-up call."""
    work()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return items / min(times)


def tower_flops(encoder, height: int, width: int) -> float:
    torch.backends.mha.set_fastpath_enabled(False)  # its fused kernel is invisible to the counter
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            encoder.model.encode_image(torch.zeros(1, 3, height, width))
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
    return float(counter.get_total_flops())


def gemm_rates(m: int, k: int, n: int, threads: int, repeats: int) -> tuple[float, float]:
    """GFLOP/s of an (m, k) @ (k, n) float32 product: torch's, then ONNX Runtime's."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    flops = 2.0 * m * k * n
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    torch_rate = best_rate(lambda: ta @ tb, flops, repeats) / 1e9
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "gemm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [m, n])],
        initializer=[numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options)
    ort_rate = best_rate(lambda: session.run(None, {"a": a}), flops, repeats) / 1e9
    return torch_rate, ort_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32:random")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    encoder = load_model(args.model, device="cpu")
    height, width = encoder.image_size
    visual = encoder.model.visual
    tokens = (height // visual.patch_size[0]) * (width // visual.patch_size[1]) + 1
    tower_width = visual.transformer.width
    flops = tower_flops(encoder, height, width)
    gemm_torch, gemm_ort = gemm_rates(
        tokens * args.batch, tower_width, 4 * tower_width, args.threads, args.repeats
    )

    pixels = np.random.default_rng(0).integers(0, 256, (args.batch, 3, height, width), np.uint8)
    with tempfile.TemporaryDirectory() as folder:
        export_onnx(encoder, Path(folder) / "export")
        onnx_encoder = load_onnx(
            Path(folder) / "export", fingerprint=encoder.fingerprint, bulk=True
        )
        with torch.no_grad():
            torch_rate = best_rate(
                lambda: encoder.encode_images(torch.from_numpy(pixels)), args.batch, args.repeats
            )
        onnx_rate = best_rate(lambda: onnx_encoder.encode_images(pixels), args.batch, args.repeats)

    results = {
        "machine": machine() | {"onnxruntime": ort.__version__, "onnx": onnx.__version__},
        "model": args.model,
        "batch": args.batch,
        "threads": args.threads,
        "tower_gflop_per_image": flops / 1e9,
        "gemm_shape": [tokens * args.batch, tower_width, 4 * tower_width],
        "gemm_gflops": {"torch": gemm_torch, "onnxruntime": gemm_ort},
        "images_per_s": {"torch": torch_rate, "onnx": onnx_rate},
        "tower_gflops": {"torch": torch_rate * flops / 1e9, "onnx": onnx_rate * flops / 1e9},
        "ceiling_over_torch": max(gemm_torch, gemm_ort) * 1e9 / flops / torch_rate,
    }
    print(f"{args.model}: {flops / 1e9:.2f} GFLOP per image, batch {args.batch}")
    print(f"GEMM {results['gemm_shape']}: torch {gemm_torch:.0f}, ORT {gemm_ort:.0f} GFLOP/s")
    for runtime, rate in results["images_per_s"].items():
        print(
            f"{runtime:6s} {rate:6.1f} images/s = {rate * flops / 1e9:5.0f} GFLOP/s "
            f"({rate * flops / 1e9 / max(gemm_torch, gemm_ort):.0%} of the best GEMM rate)"
        )
    print(f"ceiling: {results['ceiling_over_torch']:.2f}x torch at the GEMM rate")
    name = args.model.split(":")[0]
    write_results(Path(__file__).parent / "results" / f"bench_encoder_ceiling_{name}.json", results)


if __name__ == "__main__":
    main()
