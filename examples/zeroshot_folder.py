"""Zero-shot classify a folder of images into labels you name, and save the predictions.

    python examples/zeroshot_folder.py PHOTOS_DIR "cat,dog,car" predictions.csv [--model SPEC]

PHOTOS_DIR may also be a class-per-subfolder tree (then accuracy is reported) or an embeddings
folder made by `clipkit embed` (then nothing is encoded again).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from clipkit.zeroshot import ZeroShotConfig, write_predictions, zeroshot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos", type=Path)
    parser.add_argument("labels", help="comma-separated, e.g. 'cat,dog,car'")
    parser.add_argument("out", type=Path, help=".csv, .json, .jsonl or .parquet")
    parser.add_argument("--model", default="clipkit-tiny:random")
    parser.add_argument("--templates", default="simple", help="simple, openai or a file")
    args = parser.parse_args()

    result = zeroshot(
        ZeroShotConfig(
            images=args.photos,
            labels=args.labels,
            model=args.model,
            templates=args.templates,
            device="cpu",
        )
    )
    write_predictions(result, args.out)
    print(
        f"{len(result.predictions)} images, {len(result.labels)} labels, "
        f"{len(result.failures)} skipped -> {args.out}"
    )
    for label, count in result.distribution:
        print(f"  {label}: {count}")
    if result.metrics is not None:
        print(f"top-1 {result.metrics.top1:.1%}, top-{result.metrics.k} {result.metrics.topk:.1%}")
    for prediction in result.predictions[:5]:
        print(f"  {prediction.uri}: {prediction.label} ({prediction.confidence:.2f})")


if __name__ == "__main__":
    main()
