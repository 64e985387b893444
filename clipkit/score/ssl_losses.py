"""Image self-supervision losses on two views of each image (SLIP adds SimCLR to CLIP; DeCLIP
SimSiam). Each takes the two views' outputs row-aligned: row n of ``first`` and of ``second``
come from the same image.

- SimCLR (Chen et al. 2020), NT-Xent over the 2N views: each view's positive is the other view
  of its image, its negatives the other 2N - 2 views.
- SimSiam (Chen & He 2021): negative cosine between one view's prediction and the other view's
  projection, whose gradient is stopped.
- BYOL (Grill et al. 2020): ``2 - 2·cos`` between one view's prediction and a momentum target's
  projection of the other view (a constant here).
- SwAV (Caron et al. 2020): each view predicts the cluster assignment (codes) of the other,
  codes from Sinkhorn-Knopp so that the batch spreads evenly over the prototypes.

Every symmetric loss is the mean of its two directions, so that ``--ssl-weight`` means the same
for each.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent(first: torch.Tensor, second: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """SimCLR's NT-Xent: ``(1/2N) Σ_i -log exp(s(i, p(i))/τ) / Σ_{k≠i} exp(s(i, k)/τ)``.

    Args:
        first, second: (N, D) projections of the two views (normalised here).
        temperature: τ.
    """
    views = F.normalize(torch.cat([first, second]).float(), dim=-1)  # (2N, D)
    logits = views @ views.T / temperature
    logits = logits.masked_fill(
        torch.eye(len(views), dtype=torch.bool, device=views.device), -torch.inf
    )
    half = len(first)
    positives = torch.arange(len(views), device=views.device).roll(half)  # i <-> i ± N
    return F.cross_entropy(logits, positives)


def negative_cosine(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SimSiam's ``D(p, z) = -cos(p, stopgrad(z))``, averaged over rows: (N, D), (N, D)."""
    return -F.cosine_similarity(prediction.float(), target.detach().float(), dim=-1).mean()


def simsiam_loss(
    predictions: tuple[torch.Tensor, torch.Tensor], projections: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """``½ D(p1, z2) + ½ D(p2, z1)``: each view's prediction against the other's projection."""
    (p1, p2), (z1, z2) = predictions, projections
    return 0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1)


def byol_loss(
    predictions: tuple[torch.Tensor, torch.Tensor], targets: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """``½ (2 - 2 cos(q1, z'2)) + ½ (2 - 2 cos(q2, z'1))``, averaged over rows; the targets
    ``z'`` (the momentum network's projections) get no gradient."""
    (q1, q2), (t1, t2) = predictions, targets
    return 2.0 + negative_cosine(q1, t2) + negative_cosine(q2, t1)


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Sinkhorn-Knopp codes of (N, P) prototype scores: the (N, P) matrix ∝ ``exp(scores/ε)``
    scaled so that each row (sample) sums to 1 and each column (prototype) to N/P, the equal
    partition; after a few iterations the rows are exact (the last step) and the columns close.
    """
    codes = (scores.float() / epsilon).exp_()  # scores are cosines in [-1, 1]: no overflow
    codes /= codes.sum()
    samples, prototypes = codes.shape
    for _ in range(iterations):
        codes /= codes.sum(dim=0, keepdim=True) * prototypes  # each prototype: 1/P of the mass
        codes /= codes.sum(dim=1, keepdim=True) * samples  # each sample: 1/N of the mass
    return codes * samples


def swav_loss(
    first: torch.Tensor,
    second: torch.Tensor,
    temperature: float = 0.1,
    epsilon: float = 0.05,
    iterations: int = 3,
) -> torch.Tensor:
    """SwAV's swapped prediction: ``-½ (1/N) Σ_n [q2_n · log softmax(s1_n/τ) + q1_n · log
    softmax(s2_n/τ)]`` with ``q = sinkhorn(s)`` (no gradient).

    Args:
        first, second: (N, P) scores of the two views against the normalised prototypes
            (cosines: normalised projections times normalised prototypes).
    """
    codes_first, codes_second = (
        sinkhorn(first, epsilon, iterations),
        sinkhorn(second, epsilon, iterations),
    )
    log_first = F.log_softmax(first.float() / temperature, dim=-1)
    log_second = F.log_softmax(second.float() / temperature, dim=-1)
    return -0.5 * (
        (codes_second * log_first).sum(dim=-1).mean()
        + (codes_first * log_second).sum(dim=-1).mean()
    )
