"""Benchmark ``clipkit train``'s objectives (issue #27). So far: training speed with FLIP's
patch masking, samples/s of ``clipkit-small`` at mask ratios 0, 0.5 and 0.75, same data,
same steps, same run (the goal: mask 0.5 at >= 1.6x the samples/s of mask 0). The quality
table (recall and zero-shot per objective over seeds) is added with the other objectives.

    python benchmarks/bench_objectives.py --steps 20 --batch-size 64
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from common import machine, write_results

from clipkit.inputs.synthetic import write_captioned_shapes
from clipkit.train import TrainConfig, train

RATIOS = (0.0, 0.5, 0.75)


def masking_speed(data: Path, out: Path, steps: int, batch_size: int, rounds: int) -> list[dict]:
    """samples/s (training only: evaluation and checkpoints are not counted) per mask ratio,
    the best of ``rounds`` runs each, the ratios interleaved so that drift hits them alike."""
    best: dict[float, float] = {}
    for round_ in range(rounds):
        for ratio in RATIOS:
            result = train(
                TrainConfig(
                    data=str(data), out=str(out / f"r{round_}-{ratio}"),
                    model="clipkit-small:random", steps=steps, batch_size=batch_size,
                    val_split=0.0, mask_ratio=ratio, seed=0,
                )
            )  # fmt: skip
            best[ratio] = max(best.get(ratio, 0.0), result.samples_per_second)
    return [
        {"mask_ratio": ratio, "samples_per_s": rate, "speed_up": rate / best[0.0]}
        for ratio, rate in best.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-objectives-") as tmp:
        data = Path(tmp) / "data"
        write_captioned_shapes(data, args.batch_size * 4, seed=0, size=128)
        speed = masking_speed(data, Path(tmp), args.steps, args.batch_size, args.rounds)
    results = {"machine": machine(), "steps": args.steps, "batch_size": args.batch_size,
               "masking_speed": speed}  # fmt: skip
    print(json.dumps(speed, indent=2))
    write_results(Path(__file__).parent / "results" / "objectives.json", results)


if __name__ == "__main__":
    main()
