"""How ``clipkit audit`` decides which pairs to flag: scores of unrelated pairs drawn from the
dataset itself (images with shuffled captions), the mixture of matched and mismatched pairs
fitted against them (``clipkit.audit.mixture``), and the flag rule: a probability (the
default), a share of unrelated pairs let through (``--fpr``), or a raw cosine
(``--threshold``), capped by ``--max-flags``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from clipkit.audit.config import (
    COMPARED_FPR,
    DEFAULT_MIN_PROBABILITY,
    PROBABILITY_MIN_PAIRS,
    AuditConfig,
)
from clipkit.audit.mixture import estimate_mixture
from clipkit.errors import InputError
from clipkit.score.metrics import calibrate_threshold

NULL_SAMPLES = 20_000  # shuffled pairs drawn for calibration (at least one per pair)
HISTOGRAM_BINS = 40


@dataclass(frozen=True)
class Calibration:
    """How the flag threshold was set and what the score distributions look like."""

    statistic: str  # "probability" (default), "mismatch" (--fpr) or "cosine" (--threshold)
    threshold: float  # flagged: probability >= it, mismatch >= it, or cosine < it
    method: str
    fpr: float | None
    null_pairs: int
    null_pass_rate: float  # shuffled pairs that pass as matched under the flag rule
    cosine_at_fpr: float | None  # the raw-cosine threshold letting --fpr (or 1 %) pass
    histogram: dict[str, list[float]]  # edges, matched, shuffled (of the mismatch or cosine)
    quantiles: dict[str, dict[str, float]]  # matched/shuffled cosine at 5/25/50/75/95 %
    mismatched_share: float = 0.0  # π: the estimated share of mismatched pairs
    mismatched_interval: tuple[float, float] = (0.0, 0.0)  # its 95 % bootstrap interval
    max_flags: int | None = None  # the cap on flags, when one was given
    capped: int = 0  # pairs the rule flagged beyond the cap, not flagged

    def rule(self) -> str:
        """The flag rule in words, with the share of shuffled (unrelated) pairs it lets pass."""
        passing = f"{self.null_pass_rate:.2%} of {self.null_pairs} shuffled pairs pass"
        if self.statistic == "probability":
            return f"with probability ≥ {self.threshold:g} ({passing})"
        if self.statistic == "mismatch":
            return f"by mismatch ≥ {self.threshold:.4f} ({self.method}; {passing})"
        return f"by cosine < {self.threshold:.4f} ({self.method}; {passing})"

    def mismatched_pairs(self, pairs: int) -> tuple[int, int, int]:
        """About how many of ``pairs`` pairs are mismatched: (estimate, low, high)."""
        low, high = self.mismatched_interval
        return (
            round(self.mismatched_share * pairs),
            math.floor(low * pairs),
            math.ceil(high * pairs),
        )


def shuffled_null(
    image_vectors: torch.Tensor,
    caption_vectors: torch.Tensor,
    stats: Any,
    groups: tuple[torch.Tensor, torch.Tensor],
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine and mismatch of images paired with shuffled captions (never their own content).

    Args:
        image_vectors, caption_vectors: (S, D) unit rows; row i is pair i.
        stats: their ``score.pair_statistics`` (each row's and column's neighbourhood).
        groups: (S,) image and caption group ids: equal ids are the same content.

    Returns:
        (N,) cosines and (N,) mismatches of about ``NULL_SAMPLES`` unrelated pairs.
    """
    image_groups, caption_groups = groups
    size = len(image_vectors)
    generator = torch.Generator().manual_seed(seed)
    cosines, mismatches = [], []
    for _ in range(max(1, math.ceil(NULL_SAMPLES / size))):
        shuffled = torch.randperm(size, generator=generator)
        unrelated = (caption_groups[shuffled] != caption_groups) & (
            image_groups[shuffled] != image_groups
        )
        images, captions = torch.nonzero(unrelated).squeeze(1), shuffled[unrelated]
        cosine = (image_vectors[images] * caption_vectors[captions]).sum(dim=1)
        cosines.append(cosine)
        mismatches.append(
            stats.row_neighbourhood[images] + stats.column_neighbourhood[captions] - 2 * cosine
        )
    return torch.cat(cosines), torch.cat(mismatches)


def calibrate(
    config: AuditConfig,
    cosine: torch.Tensor,
    mismatch: torch.Tensor,
    null_cosine: torch.Tensor,
    null_mismatch: torch.Tensor,
) -> tuple[Calibration, torch.Tensor, np.ndarray]:
    """The flag rule, what it lets through, and each pair's probability of being mismatched."""
    if null_cosine.numel() == 0:
        raise InputError(
            "Every pair shares its image or caption with every other pair.",
            "Auditing needs pairs with different images and captions.",
        )
    mixture = estimate_mixture(mismatch.numpy(), null_mismatch.numpy(), seed=config.seed)
    probability = mixture.probabilities
    if config.threshold is not None:
        statistic, threshold, method = "cosine", config.threshold, "given raw cosine threshold"
        flagged = cosine < threshold
        passed = float((null_cosine >= threshold).float().mean())
    elif config.fpr is not None or mismatch.numel() < PROBABILITY_MIN_PAIRS:
        fpr = config.fpr if config.fpr is not None else COMPARED_FPR
        statistic, method = "mismatch", f"shuffled-caption null at fpr {fpr:g}"
        if config.fpr is None:
            method += f" (fewer than {PROBABILITY_MIN_PAIRS} pairs: too few for probabilities)"
        # A shuffled pair passes as matched when its mismatch is below the threshold.
        threshold = calibrate_threshold(null_mismatch.tolist(), fpr)
        flagged = mismatch >= threshold
        passed = float((null_mismatch < threshold).float().mean())
    else:
        statistic = "probability"
        threshold = (
            config.min_probability
            if config.min_probability is not None
            else DEFAULT_MIN_PROBABILITY
        )
        method = "mixture of matched and shuffled pairs (local false discovery rate)"
        flagged = torch.from_numpy(probability >= threshold)
        # The probability rises with the mismatch: the shuffled pairs that would pass are
        # those below the least suspicious flagged pair's mismatch.
        lowest = float(mismatch[flagged].min()) if bool(flagged.any()) else math.inf
        passed = float((null_mismatch < lowest).float().mean())
    flagged, capped = _capped(flagged, mismatch, probability, cosine, statistic, config.max_flags)
    matched, shuffled = (
        (cosine, null_cosine) if statistic == "cosine" else (mismatch, null_mismatch)
    )
    edges = np.histogram_bin_edges(torch.cat([matched, shuffled]).numpy(), bins=HISTOGRAM_BINS)
    histogram = {
        "edges": edges.tolist(),
        "matched": np.histogram(matched.numpy(), edges)[0].tolist(),
        "shuffled": np.histogram(shuffled.numpy(), edges)[0].tolist(),
    }
    levels = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95])
    quantiles = {
        name: dict(
            zip(
                ("5%", "25%", "50%", "75%", "95%"),
                torch.quantile(values.float(), levels).tolist(),
                strict=True,
            )
        )
        for name, values in (("matched", cosine), ("shuffled", null_cosine))
    }
    compared_fpr = config.fpr if config.fpr is not None else COMPARED_FPR
    calibration = Calibration(
        statistic=statistic,
        threshold=float(threshold),
        method=method,
        fpr=config.fpr,
        null_pairs=int(null_cosine.numel()),
        null_pass_rate=passed,
        # For comparison with CLIP-score filtering: flag cosine <= this, same share passes.
        cosine_at_fpr=-calibrate_threshold((-null_cosine).tolist(), compared_fpr),
        histogram=histogram,
        quantiles=quantiles,
        mismatched_share=mixture.share,
        mismatched_interval=mixture.interval,
        max_flags=config.max_flags,
        capped=capped,
    )
    return calibration, flagged, probability


def suspicion(
    statistic: str, cosine: float, mismatch: float, probability: float
) -> tuple[float, float]:
    """A pair's sort key, most suspicious first, under the rule that flags (``statistic``)."""
    if statistic == "cosine":
        return (cosine, -mismatch)
    if statistic == "mismatch":
        return (-mismatch, -probability)
    return (-probability, -mismatch)


def _capped(
    flagged: torch.Tensor,
    mismatch: torch.Tensor,
    probability: np.ndarray,
    cosine: torch.Tensor,
    statistic: str,
    max_flags: int | None,
) -> tuple[torch.Tensor, int]:
    """At most ``max_flags`` flags, the most suspicious under the rule; and how many were cut."""
    count = int(flagged.sum())
    if max_flags is None or count <= max_flags:
        return flagged, 0
    rows = torch.nonzero(flagged).squeeze(1).tolist()
    rows.sort(
        key=lambda r: suspicion(
            statistic, float(cosine[r]), float(mismatch[r]), float(probability[r])
        )
    )
    kept = torch.zeros_like(flagged)
    kept[rows[:max_flags]] = True
    return kept, count - max_flags
