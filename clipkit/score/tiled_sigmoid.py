"""SigLIP's pairwise sigmoid loss (Zhai et al. 2023), tiled: the (S, S) logits are never held.

For logits ``z_ij = t·<a_i, b_j> + b`` and labels ``y_ij`` = +1 on the diagonal, -1 elsewhere,

    loss = -(1/S) Σ_i Σ_j log σ(y_ij z_ij) = (1/S) [ Σ_ij softplus(z_ij) - Σ_i z_ii ]

(``-log σ(-z) = softplus(z)`` and ``softplus(-z) = softplus(z) - z``). Its gradient with
respect to the logits is ``G = (1/S) [σ(Z) - I]``, whence ``dA = t·G B``, ``dB = t·Gᵀ A``,
``dt = Σ G ∘ (A Bᵀ)`` and ``db = Σ G``. Every pair's term stands alone (no normalisation
across a row, unlike softmax), so the forward pass sums tile by tile and the backward pass
recomputes one tile at a time: peak extra memory O(S·D + tile²).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clipkit.score.tiled_loss import accumulator, default_tile


class TiledSigmoidLoss(torch.autograd.Function):
    """Autograd function ``(A (S,D), B (S,D), t (), b (), tile) -> loss ()``."""

    @staticmethod
    def forward(ctx, a, b, scale, bias, tile: int):
        size, acc = a.shape[0], accumulator(a)
        total = torch.zeros((), device=a.device, dtype=acc)
        for rows, cols, dots in _tiles(a, b, tile):
            logits = scale.to(acc) * dots + bias.to(acc)
            total += F.softplus(logits).sum()
            if rows == cols:  # the positive pairs: softplus(-z) = softplus(z) - z
                total -= logits.diagonal().sum()
        ctx.save_for_backward(a, b, scale, bias)
        ctx.tile = tile
        return (total / size).to(scale.dtype)

    @staticmethod
    def backward(ctx, grad_loss):
        a, b, scale, bias = ctx.saved_tensors
        size, acc = a.shape[0], accumulator(a)
        grad_a = torch.zeros_like(a, dtype=acc)
        grad_b = torch.zeros_like(b, dtype=acc)
        grad_scale = torch.zeros((), device=a.device, dtype=acc)
        grad_bias = torch.zeros((), device=a.device, dtype=acc)
        for rows, cols, dots in _tiles(a, b, ctx.tile):
            probs = torch.sigmoid(scale.to(acc) * dots + bias.to(acc)).div_(size)
            if rows == cols:  # G = (σ(Z) - I) / S
                probs.diagonal().sub_(1.0 / size)
            grad_scale += (probs * dots).sum()
            grad_bias += probs.sum()
            grad_a[rows] += probs.to(b.dtype) @ b[cols]
            grad_b[cols] += probs.T.to(a.dtype) @ a[rows]
        upstream = grad_loss.to(acc)
        along = scale.to(acc) * upstream
        return (
            (grad_a * along).to(a.dtype),
            (grad_b * along).to(b.dtype),
            (grad_scale * upstream).to(scale.dtype),
            (grad_bias * upstream).to(bias.dtype),
            None,
        )


def tiled_sigmoid_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    tile: int | None = None,
) -> torch.Tensor:
    """Same value and gradients as the reference sigmoid loss, in O(S·D + tile²) memory.

    ``scale`` is t (already exponentiated and clamped), ``bias`` is b; both scalars.
    """
    tile = tile or default_tile(image_features.device)
    return TiledSigmoidLoss.apply(image_features, text_features, scale, bias, tile)


def _tiles(a: torch.Tensor, b: torch.Tensor, tile: int):
    """(row slice, column slice, dots) for each tile of ``A Bᵀ``, in the accumulator dtype;
    the slices are equal on the diagonal tiles."""
    acc = accumulator(a)
    for i in range(0, a.shape[0], tile):
        for j in range(0, b.shape[0], tile):
            rows, cols = slice(i, i + tile), slice(j, j + tile)
            yield rows, cols, (a[rows] @ b[cols].T).to(acc)
