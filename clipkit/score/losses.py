"""The contrastive losses (CLIP's InfoNCE, SigLIP's sigmoid) and their backends, and similarity:
the torch part of the scoring core.

The reference implementation in ``reference.py`` is the specification; the loss backend is
chosen per call (fused Triton kernel for fp16/bf16 CUDA tensors when available, else the tiled
autograd function) and can be forced for tests by setting ``clipkit.score.losses.LOSS_BACKEND``
to ``"reference"``, ``"tiled"`` or ``"triton"``. The sigmoid loss has a reference and a tiled
backend (``"triton"`` runs the tiled one).
"""

from __future__ import annotations

import math

import torch

from clipkit.errors import InputError
from clipkit.score import reference
from clipkit.score.tiled_loss import default_tile, logsumexps, tiled_contrastive_loss
from clipkit.score.tiled_sigmoid import tiled_sigmoid_loss

__all__ = [
    "LOSS_BACKEND",
    "MAX_SCALE",
    "contrastive_loss",
    "directional_losses",
    "loss_backend",
    "sigmoid_loss",
    "similarity",
]

# 1/t is clamped at 100, as in CLIP: larger scales make training unstable.
MAX_SCALE = 100.0
# Kept equal to triton_loss.MAX_DIM without importing Triton on machines that lack CUDA.
MAX_TRITON_DIM = 1024


def _triton_available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        from clipkit.score import triton_loss  # noqa: F401
    except ImportError:
        return False
    return True


#: "auto" (per call: triton for fp16/bf16 CUDA tensors when available, else tiled), or forced.
LOSS_BACKEND = "auto"
_TRITON_READY = _triton_available()


def loss_backend(
    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, dim: int = 512
) -> tuple[str, str]:
    """The loss implementation used for (S, dim) features of ``dtype`` on ``device``, and why."""
    if LOSS_BACKEND != "auto":
        return LOSS_BACKEND, "forced by clipkit.score.losses.LOSS_BACKEND"
    kind = torch.device(device).type
    if kind != "cuda":
        return "tiled", f"{kind} tensors"
    if not _TRITON_READY:
        return "tiled", "CUDA tensors, but Triton is not importable"
    if dtype not in (torch.float16, torch.bfloat16):
        return "tiled", f"CUDA {dtype} tensors (the Triton kernels take fp16/bf16)"
    if dim > MAX_TRITON_DIM:
        return "tiled", f"embedding size {dim} > {MAX_TRITON_DIM} (Triton row blocks)"
    return "triton", f"CUDA {dtype} tensors and Triton is importable"


def similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Inner products (A, D) x (B, D) -> (A, B); cosine similarity for unit-norm inputs."""
    return a @ b.T


def contrastive_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    *,
    weight: float = 0.5,
    tile: int | None = None,
) -> torch.Tensor:
    """Bidirectional InfoNCE: ``(1/S) Σ_i [λ L_i(I→w) + (1-λ) L_i(w→I)]``.

    Features are used as given (normalise them first, as open_clip does). With ``weight`` 0.5
    this equals open_clip's ``ClipLoss`` called with ``logit_scale.exp()``.

    Args:
        image_features: (S, D) image embeddings; row i pairs with ``text_features[i]``.
        text_features: (S, D) text embeddings.
        logit_scale: scalar ``log(1/t)``; clamped so that ``1/t <= 100``.
        weight: λ in [0, 1], the weight of the image→text direction.
        tile: tile edge for the tiled backend (memory O(S·D + tile²)); by default 1024 on
            the CPU and 4096 on CUDA.

    Returns:
        Scalar loss, differentiable in both feature tensors and ``logit_scale``.
    """
    _check_pairs(image_features, text_features)
    if not 0.0 <= weight <= 1.0:
        raise InputError(f"λ must be in [0, 1], got {weight}.", "0.5 weighs both directions.")
    scale = logit_scale.clamp(max=math.log(MAX_SCALE)).exp()
    backend, _ = loss_backend(image_features.device, image_features.dtype, image_features.shape[1])
    if backend == "reference":
        return reference.contrastive_loss(image_features, text_features, scale, weight)
    if backend == "triton":
        from clipkit.score.triton_loss import triton_contrastive_loss

        return triton_contrastive_loss(image_features, text_features, scale, weight)
    return tiled_contrastive_loss(image_features, text_features, scale, weight, tile)


def sigmoid_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    *,
    tile: int | None = None,
) -> torch.Tensor:
    """SigLIP's loss: ``-(1/S) Σ_i Σ_j log σ(y_ij z_ij)``, ``z_ij = t <a_i, b_j> + b``,
    ``y`` = +1 for the S pairs and -1 for every other (image, text) combination.

    Equals open_clip's ``SigLipLoss`` called with ``logit_scale.exp()`` and ``logit_bias``.

    Args:
        image_features: (S, D) image embeddings; row i pairs with ``text_features[i]``.
        text_features: (S, D) text embeddings.
        logit_scale: scalar ``log t``; clamped so that ``t <= 100``.
        logit_bias: scalar b.
        tile: tile edge (memory O(S·D + tile²)); by default 1024 on the CPU, 4096 on CUDA.

    Returns:
        Scalar loss, differentiable in both feature tensors, ``logit_scale`` and ``logit_bias``.
    """
    _check_pairs(image_features, text_features)
    scale = logit_scale.clamp(max=math.log(MAX_SCALE)).exp()
    if LOSS_BACKEND == "reference":
        return reference.sigmoid_loss(image_features, text_features, scale, logit_bias)
    return tiled_sigmoid_loss(image_features, text_features, scale, logit_bias, tile)


def _check_pairs(image_features: torch.Tensor, text_features: torch.Tensor) -> None:
    if image_features.shape != text_features.shape or image_features.ndim != 2:
        raise InputError(
            f"Image features {tuple(image_features.shape)} and text features "
            f"{tuple(text_features.shape)} must both be (S, D).",
            "Pass one image and one text embedding per pair.",
        )
    if image_features.shape[0] == 0:
        raise InputError("The contrastive loss needs at least one pair.", "Use a batch of S >= 1.")


@torch.no_grad()
def directional_losses(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two directions of the loss, ``mean_i L_i(I→w)`` and ``mean_i L_i(w→I)``, for logging.

    Tiled like the loss (no (S, S) matrix); no gradient. Shapes as :func:`contrastive_loss`.
    """
    scale = logit_scale.clamp(max=math.log(MAX_SCALE)).exp()
    row_lse, col_lse, diagonal = logsumexps(
        image_features, text_features, scale, default_tile(image_features.device)
    )
    return (row_lse - diagonal).mean(), (col_lse - diagonal).mean()
