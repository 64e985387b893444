"""Zero-shot classification: a class embedding is the normalised mean of its label's prompts
(prompt ensembling, as in the CLIP paper and open_clip), and an image's class probabilities
come from its similarity to each (a softmax, or SigLIP's sigmoid). Shared by ``clipkit
zeroshot`` and the zero-shot evaluation of ``clipkit train --eval-classes``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from clipkit.score.arrays import as_numpy

SIMPLE_TEMPLATES = ("a photo of a {}.",)


def fill_templates(labels: Sequence[str], templates: Sequence[str]) -> list[list[str]]:
    """Every template with ``{}`` replaced by each label: (C lists of T prompts)."""
    return [[template.replace("{}", label) for template in templates] for label in labels]


def class_embeddings(
    encode_texts: Callable[[Sequence[str]], Any],
    prompts_per_class: Sequence[Sequence[str]],
) -> np.ndarray:
    """Unit-norm class embeddings (C, D) float32: the normalised mean of each class's prompt
    embeddings.

    Args:
        encode_texts: texts -> unit-norm embeddings (B, D), from either runtime.
        prompts_per_class: for each class, its filled-in prompts (at least one).
    """
    rows = []
    for prompts in prompts_per_class:
        mean = as_numpy(encode_texts(list(prompts))).astype(np.float32).mean(axis=0)
        rows.append(mean / np.linalg.norm(mean))
    return np.stack(rows)


def classify(
    images: Any,
    weights: np.ndarray,
    scale: float,
    k: int,
    chunk: int = 4096,
    bias: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k class probabilities of ``logits = scale * images @ weights.T``.

    A softmax over the classes (CLIP's, as open_clip's zero-shot classifier), or, for a model
    trained with SigLIP's loss (one with a logit ``bias``), each class's own sigmoid
    ``σ(logits + bias)``: the probability that the image matches that class's prompts, as
    the model was trained to give it (the classes' probabilities need not sum to 1). The
    order of the classes is the same either way.

    Args:
        images: (N, D) unit-norm image embeddings (NumPy, or a torch tensor).
        weights: (C, D) unit-norm class embeddings.
        scale: ``exp(logit_scale)`` of the model.
        k: how many classes to keep per image (at most C).
        bias: the model's ``logit_bias`` (SigLIP), or None for the softmax.

    Returns:
        probabilities (N, k) float32 and class indices (N, k) int64, best first; a tie goes
        to the class named first.
    """
    images, weights = as_numpy(images), as_numpy(weights).astype(np.float32)
    k = min(k, weights.shape[0])
    parts_p, parts_i = [np.empty((0, k), np.float32)], [np.empty((0, k), np.int64)]
    for start in range(0, images.shape[0], chunk):
        logits = scale * (images[start : start + chunk].astype(np.float32) @ weights.T)
        if bias is None:
            logits -= logits.max(axis=1, keepdims=True)  # softmax without overflow
            probabilities = np.exp(logits)
            probabilities /= probabilities.sum(axis=1, keepdims=True)
        else:
            probabilities = sigmoid(logits + np.float32(bias))
        best = np.argsort(-logits, axis=1, kind="stable")[:, :k]
        parts_p.append(np.take_along_axis(probabilities, best, axis=1))
        parts_i.append(best.astype(np.int64))
    return np.concatenate(parts_p), np.concatenate(parts_i)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """σ(x) = 1 / (1 + e^-x), without overflow for large |x|."""
    positive = x >= 0
    out = np.empty_like(x)
    out[positive] = 1.0 / (1.0 + np.exp(-x[positive]))
    exp = np.exp(x[~positive])
    out[~positive] = exp / (1.0 + exp)
    return out
