"""InfoNCE with a queue of extra negatives (MoCo, He et al. 2020; ALBEF, Li et al. 2021).

Each direction's softmax denominator adds the keys a FIFO queue holds from earlier steps:

    L_i(I→w) = -log exp(t <a_i, b_i>) / (Σ_k exp(t <a_i, b_k>) + Σ_q exp(t <a_i, q^w_q>))

and symmetrically for text→image with the image queue; the loss is
``(1/S) Σ_i [λ L_i(I→w) + (1-λ) L_i(w→I)]``. The queues are constants (no gradient). The
logits are (S, S + K): small next to the batches this is for (a CPU or one GPU, a few dozen
pairs, thousands of queued keys).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def queue_contrastive_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    scale: torch.Tensor,
    image_queue: torch.Tensor,
    text_queue: torch.Tensor,
    weight: float = 0.5,
) -> torch.Tensor:
    """Bidirectional InfoNCE whose negatives are the batch and the queues.

    Args:
        image_features: (S, D) image embeddings ``a_i`` (queries of image→text).
        text_features: (S, D) text embeddings ``b_i``; pair i is (a_i, b_i).
        scale: scalar t = 1/temperature (already exponentiated and clamped).
        image_queue: (K, D) image keys of earlier steps, negatives of text→image.
        text_queue: (K', D) text keys of earlier steps, negatives of image→text.
        weight: λ, the share of the image→text direction.

    Returns:
        Scalar loss; with empty queues, the plain contrastive loss.
    """
    batch = image_features @ text_features.T  # (S, S)
    image_to_text = torch.cat([batch, image_features @ text_queue.detach().T.to(batch)], dim=1)
    text_to_image = torch.cat([batch.T, text_features @ image_queue.detach().T.to(batch)], dim=1)
    labels = torch.arange(len(batch), device=batch.device)
    return weight * F.cross_entropy(scale * image_to_text, labels) + (1 - weight) * (
        F.cross_entropy(scale * text_to_image, labels)
    )
