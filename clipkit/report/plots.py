"""PNG charts (matplotlib, headless): the only module that imports matplotlib."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clipkit.infra.atomic import atomic_path


def plot_training(records: Sequence[dict[str, Any]], path: Path) -> Path:
    """Training loss per step, validation loss and recall@5 per evaluation, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display: render to a file only
    import matplotlib.pyplot as plt

    steps = [r for r in records if r.get("kind") == "step"]
    evals = [r for r in records if r.get("kind") == "eval"]
    figure, (loss_axes, recall_axes) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    loss_axes.plot([r["step"] for r in steps], [r["loss"] for r in steps], label="train", lw=1)
    if evals:
        loss_axes.plot(
            [r["step"] for r in evals], [r["loss"] for r in evals], "o-", label="validation"
        )
        for key, label in (
            ("image_to_text_r5", "image→text R@5"),
            ("text_to_image_r5", "text→image R@5"),
            ("zeroshot_top1", "zero-shot top-1"),
        ):
            points = [(r["step"], r[key]) for r in evals if r.get(key) is not None]
            if points:
                recall_axes.plot(*zip(*points, strict=True), "o-", label=label)
        recall_axes.set_ylim(0, 1)
        recall_axes.legend()
    else:
        recall_axes.text(0.5, 0.5, "no validation set", ha="center", va="center")
    loss_axes.set(xlabel="step", ylabel="contrastive loss", title="Loss")
    recall_axes.set(xlabel="step", title="Validation")
    loss_axes.legend()
    return _save(figure, path)


def plot_confusion(labels: Sequence[str], confusion: Sequence[Sequence[int]], path: Path) -> Path:
    """Confusion matrix heatmap, rows normalised (each row: where one true class went)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    counts = np.asarray(confusion, dtype=float)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = min(4 + 0.45 * len(labels), 24)
    figure, axes = plt.subplots(figsize=(side + 1.5, side), dpi=100)
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="share of the true class")
    if len(labels) <= 50:  # beyond that, tick labels overlap into a black bar
        axes.set_xticks(range(len(labels)), labels, rotation=60, ha="right")
        axes.set_yticks(range(len(labels)), labels)
    if len(labels) <= 20:
        for (row, column), count in np.ndenumerate(counts):
            if count:
                axes.text(
                    column,
                    row,
                    f"{int(count)}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if shares[row, column] > 0.5 else "black",
                )
    axes.set(xlabel="predicted", ylabel="true", title="Confusion matrix")
    return _save(figure, path)


def plot_score_histogram(
    histogram: dict[str, list[float]], threshold: float | None, statistic: str, path: Path
) -> Path:
    """Matched pairs against shuffled pairs, as step histograms (densities), with the
    threshold (none drawn when it is None: nothing was flagged)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = histogram["edges"]
    figure, axes = plt.subplots(figsize=(8, 3.6), dpi=100)
    for name, colour in (("matched", "tab:blue"), ("shuffled", "tab:orange")):
        counts = histogram[name]
        total = max(sum(counts), 1)
        shuffled = name == "shuffled"
        axes.stairs(
            [c / total for c in counts],
            edges,
            label=f"{name} pairs",
            color=colour,
            fill=shuffled,
            alpha=0.5 if shuffled else 1.0,
            lw=1.5,
        )
    if threshold is not None:
        axes.axvline(threshold, color="black", ls="--", lw=1, label=f"threshold {threshold:.3f}")
    axes.set(xlabel=statistic, ylabel="share of pairs", title=f"{statistic}: dataset vs shuffled")
    axes.legend()
    return _save(figure, path)


def _save(figure: Any, path: Path) -> Path:
    """Lay out, write atomically as PNG, and free the figure (pyplot keeps figures alive)."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)
    return path
