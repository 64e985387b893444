"""Reference implementations of the scoring core: plain, full-matrix, and the specification.

Every faster path in ``clipkit.score`` is tested for agreement with these functions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def contrastive_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    scale: torch.Tensor,
    weight: float = 0.5,
) -> torch.Tensor:
    """Bidirectional InfoNCE with the full (S, S) logits matrix.

    Args:
        image_features: (S, D) image embeddings ``a_i``.
        text_features: (S, D) text embeddings ``b_i``; pair i is (a_i, b_i).
        scale: scalar ``1/t`` (already exponentiated and clamped).
        weight: λ, the share of the image→text direction.

    Returns:
        Scalar ``(1/S) Σ_i [λ L_i(I→w) + (1-λ) L_i(w→I)]``.
    """
    logits = scale * image_features @ text_features.T
    labels = torch.arange(logits.shape[0], device=logits.device)
    image_to_text = F.cross_entropy(logits, labels)
    text_to_image = F.cross_entropy(logits.T, labels)
    return weight * image_to_text + (1.0 - weight) * text_to_image


def sigmoid_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss with the full (S, S) logits matrix.

    Args:
        image_features: (S, D) image embeddings ``a_i``.
        text_features: (S, D) text embeddings ``b_j``; pair i is (a_i, b_i).
        scale: scalar t (already exponentiated and clamped).
        bias: scalar b.

    Returns:
        Scalar ``-(1/S) Σ_i Σ_j log σ(y_ij (t <a_i, b_j> + b))``, ``y`` = +1 on the diagonal
        and -1 elsewhere.
    """
    logits = scale * image_features @ text_features.T + bias
    labels = 2 * torch.eye(len(logits), device=logits.device, dtype=logits.dtype) - 1
    return -F.logsigmoid(labels * logits).sum() / len(logits)


def topk(queries: torch.Tensor, keys: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact inner-product top-k over the full (Q, N) score matrix; ties go to the lower index.

    Returns:
        scores (Q, min(k, N)) descending, and their key indices (Q, min(k, N)).
    """
    scores = queries @ keys.T
    order = torch.sort(scores, dim=1, descending=True, stable=True)
    k = min(k, keys.shape[0])
    return order.values[:, :k], order.indices[:, :k]
