"""How well ``clipkit audit`` says how much of a dataset is mismatched, across models and swap
rates (issue #25 item 7).

One clipkit-tiny model is trained on clean generated shapes for the largest of ``--epochs``,
its weights kept at each epoch listed; fresh audit sets have 5, 10 and 20 % of their captions
swapped between pairs. For every (epochs, swap rate): the AUROC of the mismatch score, the
estimated share of mismatched pairs π (and its interval) against the truth, and precision and
recall of the probability rule (flag when probability ≥ 0.5) and of the shuffled-pair rule
(``--fpr 0.01``). Goals: π within ±30 % of the truth at every setting; the probability rule's
precision ≥ 0.8 wherever AUROC ≥ 0.95.

The pairs' mismatch scores, the null's and the truth go to ``results/audit_grid_scores.npz``,
so that estimators can be compared on them without training again.

    python benchmarks/bench_audit_grid.py [--epochs 3,6,12,30 --swaps 0.05,0.1,0.2]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from common import machine, write_results

import clipkit.audit.run as audit_run
from clipkit.audit import AuditConfig, audit
from clipkit.infra.progress import ProgressReport
from clipkit.inputs.synthetic import swap_captions, write_captioned_shapes
from clipkit.score.metrics import auroc
from clipkit.train import TrainConfig, train

RESULTS = Path(__file__).parent / "results"


def train_with_snapshots(root: Path, pairs: int, epochs: list[int]) -> dict[int, Path]:
    """Train once for max(epochs); copy the weights at the end of each epoch listed."""
    write_captioned_shapes(root / "train", pairs, seed=0)
    run_dir = root / "run"
    kept: dict[int, Path] = {}
    finished = [0]

    def progress(report: ProgressReport) -> None:
        epoch = int(report.figures.get("epoch", 0)) if report.figures else 0
        if report.stage == "train" and epoch > finished[0] + 1:
            done = epoch - 1  # the report of its first step: the last epoch's weights are saved
            if done in epochs:
                kept[done] = shutil.copy(
                    run_dir / "last.safetensors", root / f"epoch{done}.safetensors"
                )
            finished[0] = done

    config = TrainConfig(
        data=str(root / "train"), out=str(run_dir), model="clipkit-tiny:random",
        epochs=max(epochs), batch_size=64, workers=2,
    )  # fmt: skip
    train(config, progress)
    kept[max(epochs)] = run_dir / "last.safetensors"
    return {epoch: Path(path) for epoch, path in kept.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--audit", type=int, default=1000)
    parser.add_argument("--epochs", default="3,6,12,30")
    parser.add_argument("--swaps", default="0.05,0.1,0.2")
    args = parser.parse_args()
    epochs = [int(e) for e in args.epochs.split(",")]
    swaps = [float(s) for s in args.swaps.split(",")]

    captured: dict[str, np.ndarray] = {}
    estimate = audit_run.estimate_mixture

    def keep_scores(scores, null_scores, seed=0):
        captured["scores"], captured["null"] = np.asarray(scores), np.asarray(null_scores)
        return estimate(scores, null_scores, seed)

    audit_run.estimate_mixture = keep_scores  # the scores as the estimator sees them
    root = Path(tempfile.mkdtemp(prefix="bench-audit-grid-"))
    rows, arrays = [], {}
    try:
        started = time.perf_counter()
        models = train_with_snapshots(root, args.train, epochs)
        print(f"trained {max(epochs)} epochs in {time.perf_counter() - started:.0f} s")
        sets = {}
        for swap in swaps:
            folder = root / f"audit-{swap}"
            write_captioned_shapes(folder, args.audit, seed=1)
            sets[swap] = {str(p) for p in swap_captions(folder, swap, seed=2)}
        for epoch in epochs:
            for swap, swapped in sets.items():
                folder = root / f"audit-{swap}"
                result = audit(AuditConfig(data=folder, model=str(models[epoch]), workers=2))
                truth = np.array([p.image in swapped for p in result.pairs])
                mismatch = np.array([p.mismatch for p in result.pairs])
                key = f"e{epoch}_s{swap}"
                arrays[key + "_scores"] = captured["scores"]
                arrays[key + "_null"] = captured["null"]
                arrays[key + "_truth"] = truth
                c = result.calibration
                assert c.statistic == "probability"  # the default rule
                by_fpr = audit(
                    AuditConfig(data=folder, model=str(models[epoch]), workers=2, fpr=0.01)
                )
                fpr_flags = np.array([p.flagged for p in by_fpr.pairs])
                row = {
                    "epochs": epoch,
                    "swap": swap,
                    "pairs": len(truth),
                    "true_share": float(truth.mean()),
                    "auroc": auroc(mismatch[truth].tolist(), mismatch[~truth].tolist()),
                    "share": c.mismatched_share,
                    "interval": list(c.mismatched_interval),
                    "share_error": c.mismatched_share / truth.mean() - 1,
                    "probability_rule": rates(np.array([p.flagged for p in result.pairs]), truth),
                    "fpr_rule": rates(fpr_flags, truth),
                }
                rows.append(row)
                print_row(row)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    np.savez_compressed(RESULTS / "audit_grid_scores.npz", **arrays)
    write_results(RESULTS / "audit_grid.json", {"machine": machine(), "rows": rows})


def rates(flags: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    hits = int((flags & truth).sum())
    return {
        "flagged": int(flags.sum()),
        "precision": hits / max(int(flags.sum()), 1),
        "recall": hits / max(int(truth.sum()), 1),
    }


def print_row(row: dict) -> None:
    p, f = row["probability_rule"], row["fpr_rule"]
    low, high = row["interval"]
    print(
        f"epochs {row['epochs']:>2} swap {row['swap']:.2f}: AUROC {row['auroc']:.3f}  "
        f"π {row['share']:.3f} [{low:.3f}, {high:.3f}] (truth {row['true_share']:.3f}, "
        f"{row['share_error']:+.0%})  p≥0.5: {p['flagged']} flagged, precision "
        f"{p['precision']:.2f}, recall {p['recall']:.2f}  fpr: {f['flagged']} flagged, "
        f"precision {f['precision']:.2f}, recall {f['recall']:.2f}"
    )


if __name__ == "__main__":
    main()
