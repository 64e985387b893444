"""How many pairs of a dataset are mismatched, and how likely each one is to be.

The shuffled pairs give the score distribution of unrelated pairs, ``f0``; the dataset's is a
mixture ``f = (1 - π)·f1 + π·f0`` of matched pairs and mismatched (unrelated) ones. In the
scale of the null's CDF, ``p = F0(score)`` (the share of unrelated pairs that look at least as
matched), a mismatched pair's ``p`` is uniform and a matched pair's lies near 0. So:

- ``π`` is Storey's estimate from the upper tail of ``p``: ``#{p > λ} / (n·(1 - λ))``, the
  ratio of the dataset's tail to the null's. A small λ counts more pairs (less noise) but also
  matched pairs that look unrelated (an upward bias, large for a weak model); so λ is the
  smallest at which no estimate at a larger λ is significantly lower (by more than
  ``STABILITY_Z`` standard errors of the difference), and a percentile bootstrap gives the
  interval;
- each pair's probability of being mismatched is its local false discovery rate
  ``π·f0(p) / f(p) = π / f(p)``, with ``f`` the Grenander estimate (the slopes of the least
  concave majorant of the empirical CDF of ``p``; as in Strimmer's fdrtool): non-increasing in
  ``p``, so a more suspicious pair never gets a lower probability.

NumPy only; the scores may come from either runtime.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# λ stops at 0.8: above it the tail holds a handful of pairs (10 of 1,000 at 5 % mismatched).
LAMBDAS = np.round(np.arange(0.05, 0.81, 0.05), 2)
# Measured on benchmarks/bench_audit_grid.py's saved scores (12 models x swap rates) and on
# simulated mixtures: 2.5 kept every π of the grid within 7 % of the truth, where Storey,
# Taylor and Siegmund's bootstrap choice of λ (the smallest noisy estimate as its target) sat
# up to 45 % low; 2.0 let noise pick a large λ (-23 %), 3.0 overestimated weak models more.
STABILITY_Z = 2.5
BOOTSTRAPS = 200
INTERVAL = 0.95


@dataclass(frozen=True)
class MixtureEstimate:
    """The share of mismatched pairs and each pair's probability of being one."""

    share: float  # π, in [0, 1]
    interval: tuple[float, float]  # 95 % percentile bootstrap interval of π
    tail_from: float  # the λ chosen: π counts pairs less matched-looking than this share
    probabilities: np.ndarray  # (S,) float64 in [0, 1], the local false discovery rate


def estimate_mixture(scores: np.ndarray, null_scores: np.ndarray, seed: int = 0) -> MixtureEstimate:
    """Estimate π and each pair's probability of being mismatched.

    Args:
        scores: (S,) the pairs' mismatch scores; higher is more suspicious.
        null_scores: (M,) the same score for unrelated (shuffled) pairs, M > 0.
        seed: for the bootstrap.
    """
    p = null_cdf(np.asarray(scores, np.float64), np.asarray(null_scores, np.float64))
    shares = storey_shares(p)  # (L,)
    best = stable_lambda(p)
    share = float(min(1.0, shares[best]))
    # A bootstrap sample changes the estimate only through how many pairs fall between
    # consecutive λs: draw those counts (multinomial) instead of B resamples of all S pairs
    # (200 x 100,000 float64 was 160 MB).
    between = np.bincount(np.searchsorted(LAMBDAS, p, side="left"), minlength=LAMBDAS.size + 1)
    drawn = np.random.default_rng(seed).multinomial(p.size, between / p.size, size=BOOTSTRAPS)
    above = np.cumsum(drawn[:, ::-1], axis=1)[:, ::-1][:, 1:]  # (B, L): #{p > λ_j}
    boot = above / (p.size * (1 - LAMBDAS))  # (B, L)
    low, high = np.quantile(
        np.minimum(boot[:, best], 1.0), [(1 - INTERVAL) / 2, (1 + INTERVAL) / 2]
    )
    density = grenander_density(p)
    probabilities = np.clip(share / np.maximum(density, 1e-12), 0.0, 1.0)
    return MixtureEstimate(share, (float(low), float(high)), float(LAMBDAS[best]), probabilities)


def null_cdf(scores: np.ndarray, null_scores: np.ndarray) -> np.ndarray:
    """(S,) the share of unrelated pairs scoring at most each score, kept inside (0, 1):
    uniform for a pair that is itself unrelated."""
    ordered = np.sort(null_scores)
    below = np.searchsorted(ordered, scores, side="right")
    return (below + 0.5) / (ordered.size + 1)


def storey_shares(p: np.ndarray) -> np.ndarray:
    """(L,) ``#{p > λ} / (n·(1 - λ))`` for each λ of ``LAMBDAS``."""
    counts = (p[None, :] > LAMBDAS[:, None]).sum(axis=1)
    return counts / (p.size * (1 - LAMBDAS))


def stable_lambda(p: np.ndarray, z: float = STABILITY_Z) -> int:
    """The index in ``LAMBDAS`` of the smallest λ whose estimate no larger λ's undercuts by
    more than ``z`` standard errors of their difference (the last λ if every one is).

    With ``N(λ) = #{p > λ}`` and ``a(λ) = 1 / (n·(1 - λ))``, the estimates are
    ``a_j·N_j`` and ``a_k·N_k`` (λ_j < λ_k), and ``N_j = N_k + M`` with M the pairs between
    them; counting N_k and M as independent Poisson counts, the difference has variance
    ``N_k·(a_k - a_j)² + M·a_j²``.
    """
    counts = (p[None, :] > LAMBDAS[:, None]).sum(axis=1).astype(np.float64)  # (L,)
    scale = 1.0 / (p.size * (1 - LAMBDAS))
    shares = counts * scale
    for j in range(LAMBDAS.size):
        later = slice(j + 1, None)
        variance = (
            counts[later] * (scale[later] - scale[j]) ** 2
            + (counts[j] - counts[later]) * scale[j] ** 2
        )
        undercut = shares[j] - shares[later] > z * np.sqrt(np.maximum(variance, 1e-300))
        if not undercut.any():
            return j
    return LAMBDAS.size - 1


def grenander_density(p: np.ndarray) -> np.ndarray:
    """(S,) the non-increasing density of ``p`` on [0, 1] at each ``p``: the slopes of the
    least concave majorant of the empirical CDF (with the points (0, 0) and (1, 1))."""
    values, counts = np.unique(p, return_counts=True)
    xs = np.concatenate([[0.0], values, [1.0]])
    ys = np.concatenate([[0.0], np.cumsum(counts) / p.size, [1.0]])
    hull = [0]
    for i in range(1, xs.size):
        while len(hull) >= 2 and _turns_up(xs, ys, hull[-2], hull[-1], i):
            hull.pop()
        hull.append(i)
    hx, hy = xs[hull], ys[hull]
    slopes = np.diff(hy) / np.maximum(np.diff(hx), 1e-300)
    segment = np.clip(np.searchsorted(hx, p, side="left") - 1, 0, slopes.size - 1)
    return slopes[segment]


def _turns_up(xs: np.ndarray, ys: np.ndarray, a: int, b: int, c: int) -> bool:
    """Whether b lies on or below the chord from a to c (so the concave hull skips it)."""
    return (ys[b] - ys[a]) * (xs[c] - xs[a]) <= (ys[c] - ys[a]) * (xs[b] - xs[a])
