"""Classification metrics by their textbook definitions: top-k accuracy, per-class precision and
recall, mean per-class recall (balanced accuracy), the confusion matrix, and the lower-quantile
threshold that calibrates a rejection rate."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from clipkit.errors import InputError


@dataclass(frozen=True)
class ClassScore:
    """One class: ``precision`` is None when nothing was predicted as it, ``recall`` when no
    image truly belongs to it (a label given but absent from the ground truth)."""

    label: str
    support: int  # images truly of this class
    predicted: int  # images whose top-1 prediction is this class
    correct: int
    precision: float | None
    recall: float | None


@dataclass(frozen=True)
class ClassificationMetrics:
    """Closed-set metrics of top-1 (and top-k) predictions against ground truth."""

    images: int
    top1: float
    topk: float
    k: int  # top-k accuracy's k: min(requested, number of classes)
    mean_per_class_recall: float  # over the classes with support, as sklearn's balanced accuracy
    classes: tuple[ClassScore, ...]
    confusion: tuple[tuple[int, ...], ...]  # confusion[true][predicted], counts

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def worst_confusions(self, limit: int = 10) -> list[tuple[int, int, int]]:
        """(true, predicted, count) of the largest off-diagonal cells, largest first."""
        cells = [
            (count, t, p)
            for t, row in enumerate(self.confusion)
            for p, count in enumerate(row)
            if t != p and count
        ]
        cells.sort(key=lambda cell: (-cell[0], cell[1], cell[2]))
        return [(t, p, count) for count, t, p in cells[:limit]]


def classification_metrics(
    labels: Sequence[str], targets: Sequence[int], ranked: Sequence[Sequence[int]], k: int = 5
) -> ClassificationMetrics:
    """Metrics of ranked predictions.

    Args:
        labels: the C class names.
        targets: the true class index of each of the N images.
        ranked: for each image, class indices best first (at least ``min(k, C)`` of them).
        k: top-k accuracy counts an image correct when its class is among its first k.
    """
    if len(targets) != len(ranked):
        raise ValueError(f"{len(targets)} targets for {len(ranked)} predictions")
    classes, k = len(labels), min(k, len(labels))
    confusion = [[0] * classes for _ in range(classes)]
    in_topk = 0
    for target, order in zip(targets, ranked, strict=True):
        confusion[target][order[0]] += 1
        in_topk += int(target in list(order[:k]))
    scores = []
    for c, label in enumerate(labels):
        support = sum(confusion[c])
        predicted = sum(row[c] for row in confusion)
        correct = confusion[c][c]
        scores.append(
            ClassScore(
                label,
                support,
                predicted,
                correct,
                correct / predicted if predicted else None,
                correct / support if support else None,
            )
        )
    recalls = [s.recall for s in scores if s.recall is not None]
    images = len(targets)
    return ClassificationMetrics(
        images=images,
        top1=sum(s.correct for s in scores) / images if images else 0.0,
        topk=in_topk / images if images else 0.0,
        k=k,
        mean_per_class_recall=sum(recalls) / len(recalls) if recalls else 0.0,
        classes=tuple(scores),
        confusion=tuple(tuple(row) for row in confusion),
    )


def calibrate_threshold(confidences: Sequence[float], false_reject: float) -> float:
    """The largest threshold with at most a ``false_reject`` share of ``confidences`` below it.

    Values strictly below the threshold are rejected, so it is the ``floor(q * n)``-th smallest
    value (0-based) and ties are all kept. Zero-shot rejects known images below it; audit lets
    shuffled pairs pass below it.
    """
    if not confidences:
        raise InputError(
            "No calibration value to set a threshold from.",
            "Check the calibration images or pairs.",
        )
    ordered = sorted(confidences)
    return ordered[min(math.floor(false_reject * len(ordered)), len(ordered) - 1)]


def auroc(positives: Sequence[float], negatives: Sequence[float]) -> float:
    """Area under the ROC curve: the chance that a random positive scores above a random
    negative, ties counting one half (the Mann-Whitney U statistic over n_pos · n_neg)."""
    if not positives or not negatives:
        raise ValueError("AUROC needs at least one positive and one negative score")
    ordered = sorted([(s, 1) for s in positives] + [(s, 0) for s in negatives])
    rank_sum, position = 0.0, 0
    while position < len(ordered):
        end = position
        while end < len(ordered) and ordered[end][0] == ordered[position][0]:
            end += 1
        midrank = (position + 1 + end) / 2  # ties share the mean of their 1-based ranks
        rank_sum += midrank * sum(label for _, label in ordered[position:end])
        position = end
    n_pos, n_neg = len(positives), len(negatives)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
