"""PNG charts (matplotlib, headless): training curves, confusion matrices and score histograms.
The only module that imports matplotlib; below the services, so that ``train`` draws its
curves and ``report`` its pages' charts from the same code."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clipkit.infra.atomic import atomic_path

Curve = tuple[list[float], list[float]]  # (steps, values)

# The logged parts of the training loss and the objective's state, as metrics.jsonl names them.
LOSS_PARTS = (
    ("loss_siglip", "SigLIP"),
    ("loss_queue", "InfoNCE with the queue"),
    ("loss_ssl", "image SSL (unweighted)"),
)
STATE_CURVES = (
    ("temperature", "temperature t"),
    ("queue_fill", "queue fill"),
    ("mask_ratio", "mask ratio"),
)
VALIDATION_CURVES = (
    ("image_to_text_r5", "image→text R@5"),
    ("text_to_image_r5", "text→image R@5"),
    ("zeroshot_top1", "zero-shot top-1"),
)


def training_curves(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, Curve]]:
    """The curves of the training plot, by panel ("loss", "validation", "state", "bias"), from
    ``metrics.jsonl`` records; a curve whose values were never logged is left out."""
    steps = [r for r in records if r.get("kind") == "step"]
    evals = [r for r in records if r.get("kind") == "eval"]

    def curve(rows: Sequence[dict[str, Any]], key: str) -> Curve | None:
        points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        return ([x for x, _ in points], [y for _, y in points]) if points else None

    panels: dict[str, dict[str, Curve]] = {"loss": {}, "validation": {}, "state": {}, "bias": {}}
    wanted = [("loss", steps, "loss", "train"), ("loss", evals, "loss", "validation")]
    wanted += [("loss", steps, key, label) for key, label in LOSS_PARTS]
    wanted += [("validation", evals, key, label) for key, label in VALIDATION_CURVES]
    wanted += [("state", steps, key, label) for key, label in STATE_CURVES]
    wanted += [("bias", steps, "bias", "SigLIP bias b")]
    for panel, rows, key, label in wanted:
        found = curve(rows, key)
        if found is not None:
            panels[panel][label] = found
    return panels


def plot_training(records: Sequence[dict[str, Any]], path: Path) -> Path:
    """Training loss and its logged parts per step, validation recall per evaluation, and the
    objective's state (temperature, queue fill, mask ratio, SigLIP's bias), as one PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display: render to a file only
    import matplotlib.pyplot as plt

    panels = training_curves(records)
    figure, (loss_axes, recall_axes, state_axes) = plt.subplots(1, 3, figsize=(15, 4), dpi=100)
    for label, (xs, ys) in panels["loss"].items():
        style = "o-" if label == "validation" else "-"
        loss_axes.plot(xs, ys, style, label=label, lw=1 if style == "-" else 1.5)
    if panels["validation"]:
        for label, (xs, ys) in panels["validation"].items():
            recall_axes.plot(xs, ys, "o-", label=label)
        recall_axes.set_ylim(0, 1)
        recall_axes.legend()
    else:
        recall_axes.text(0.5, 0.5, "no validation set", ha="center", va="center")
    for label, (xs, ys) in panels["state"].items():
        state_axes.plot(xs, ys, label=label, lw=1)
    handles, labels = state_axes.get_legend_handles_labels()
    if panels["bias"]:  # about -10: its own axis, so the shares in [0, 1] stay readable
        bias_axes = state_axes.twinx()
        ((xs, ys),) = panels["bias"].values()
        line = bias_axes.plot(xs, ys, color="tab:red", lw=1, label="SigLIP bias b (right)")
        bias_axes.set_ylabel("bias b")
        handles, labels = handles + line, labels + ["SigLIP bias b (right)"]
    if handles:
        state_axes.legend(handles, labels)
    loss_axes.set(xlabel="step", ylabel="loss", title="Loss")
    recall_axes.set(xlabel="step", title="Validation")
    state_axes.set(xlabel="step", title="Objective")
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
