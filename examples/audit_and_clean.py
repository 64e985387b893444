"""Audit a captioned dataset and write a cleaned CSV without the mismatched pairs.

    python examples/audit_and_clean.py DATA cleaned.csv [--model runs/mine] [--fpr 0.01]

DATA is a folder of images with .txt captions, or a CSV/TSV/JSONL/Parquet table of pairs. The
cleaned CSV keeps every pair that was not flagged; the flagged ones go to a second file with the
caption the audit suggests instead, for a person to check.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from clipkit.audit import AuditConfig, audit


def write_csv(path: Path, rows: list[dict[str, object]], fields: list[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("cleaned", type=Path)
    parser.add_argument("--model", default="clipkit-tiny:random")
    parser.add_argument("--fpr", type=float, default=0.01)
    args = parser.parse_args()

    result = audit(AuditConfig(data=args.data, model=args.model, fpr=args.fpr, device="cpu"))
    c = result.calibration
    print(
        f"{len(result.pairs)} pairs, {len(result.flagged)} flagged (mismatch >= "
        f"{c.threshold:.4f}, {c.method}), {len(result.failures)} skipped"
    )

    kept = [pair.as_dict() for pair in result.pairs if not pair.flagged]
    write_csv(args.cleaned, kept, ["image", "caption"])
    flagged_file = args.cleaned.with_name(args.cleaned.stem + ".flagged.csv")
    write_csv(
        flagged_file,
        [pair.as_dict() for pair in result.flagged],
        ["image", "caption", "suggested_caption", "mismatch", "cosine"],
    )
    print(f"kept {len(kept)} pairs in {args.cleaned}; flagged pairs in {flagged_file}")
    for pair in result.flagged[:5]:
        print(f"  {pair.image}: {pair.caption!r} -> suggested {pair.suggested_caption!r}")


if __name__ == "__main__":
    main()
