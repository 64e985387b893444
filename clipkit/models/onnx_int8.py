"""int8 exports: ONNX Runtime's dynamic quantization of a finished fp32 export, offered only
where it answers as fp32 does.

Dynamic quantization stores the weights of the matrix products as int8 (a quarter of the size)
and quantizes activations on the fly. Whether a model survives it is measured on every export,
on a probe of image-caption pairs (``clipkit export`` generates captioned shapes; a caller may
pass its own benchmark set):

- the top-10 images of each caption overlap fp32's by at least ``MIN_OVERLAP`` on average;
- image-to-caption recall@10 is within ``MAX_RECALL_GAP`` of fp32's.

A model that misses either is refused with the figures (the issue's bar: within 0.01 of fp32).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clipkit.errors import InputError, UsageError
from clipkit.models.exported import IMAGE_FILE, TEXT_FILE, replace_towers

MIN_OVERLAP = 0.99
MAX_RECALL_GAP = 0.01
K = 10


def quantize_export(
    folder: Path, preprocess: Any, tokenizer: Any, probe: tuple[Sequence[Any], Sequence[str]]
) -> dict[str, float]:
    """Replace the fp32 towers in ``folder`` (a staging folder) by int8 ones, if they agree.

    Args:
        folder: holds ``image.onnx`` and ``text.onnx`` (with their weights), fp32.
        preprocess: the model's :class:`~clipkit.models.preprocess.Preprocess`.
        tokenizer: the model's torch-free tokenizer (texts -> token ids).
        probe: RGB images (PIL) and their captions, pair i with pair i; K+1 pairs at least.

    Returns:
        The measured agreement, for the manifest.

    Raises:
        InputError: int8 changes this model's answers more than the bar allows.
    """
    from clipkit.models.onnx_encoder import quantize_int8

    check_probe(probe)
    quantized = folder / "int8"
    quantized.mkdir()
    for name in (IMAGE_FILE, TEXT_FILE):
        quantize_int8(folder / name, quantized / name)
    images, captions = probe
    pixels = preprocess.normalize(np.stack([preprocess.pixels(image) for image in images]))
    tokens = tokenizer(list(captions))
    reference = _embed(folder, pixels, tokens)
    candidate = _embed(quantized, pixels, tokens)
    agreement = _agreement(*reference, *candidate)
    if agreement["top10_overlap"] < MIN_OVERLAP or agreement["recall_gap"] > MAX_RECALL_GAP:
        raise InputError(
            "int8 changes this model's answers too much: on the probe's pairs its "
            f"top-10 images overlap fp32's by {agreement['top10_overlap']:.3f} (at least "
            f"{MIN_OVERLAP} needed) and its image-to-caption recall@10 differs by "
            f"{agreement['recall_gap']:.3f} (at most {MAX_RECALL_GAP}).",
            "Export it in fp32 (the default).",
        )
    replace_towers(folder, quantized, [IMAGE_FILE, TEXT_FILE])
    return agreement


def check_probe(probe: tuple[Sequence[Any], Sequence[str]]) -> None:
    """Refuse a probe that cannot measure top-10 agreement (before any export work).

    Raises:
        UsageError: fewer than K+1 pairs, or not one caption per image.
    """
    images, captions = probe
    if len(images) != len(captions) or len(images) <= K:
        raise UsageError(
            f"The int8 probe needs more than {K} image-caption pairs, one caption each; got "
            f"{len(images)} images and {len(captions)} captions.",
            "Pass a benchmark set of matching pairs.",
        )


def _embed(folder: Path, pixels: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The probe's (P, D) image and text embeddings by the export in ``folder``."""
    from clipkit.models.onnx_encoder import run_tower

    return run_tower(folder / IMAGE_FILE, "pixels", pixels), run_tower(
        folder / TEXT_FILE, "tokens", tokens
    )


def _agreement(
    images: np.ndarray, texts: np.ndarray, images_q: np.ndarray, texts_q: np.ndarray
) -> dict[str, float]:
    """Top-10 overlap of caption -> image search, and image -> caption recall@10, both ways."""
    top = np.argsort(-(texts @ images.T), axis=1, kind="stable")[:, :K]
    top_q = np.argsort(-(texts_q @ images_q.T), axis=1, kind="stable")[:, :K]
    overlap = np.mean([len(set(a) & set(b)) / K for a, b in zip(top, top_q, strict=True)])
    recall = _recall_at_k(images @ texts.T)
    recall_q = _recall_at_k(images_q @ texts_q.T)
    return {
        "top10_overlap": float(overlap),
        "recall_at_10_fp32": recall,
        "recall_at_10_int8": recall_q,
        "recall_gap": abs(recall - recall_q),
        "min_cosine_images": float((images * images_q).sum(1).min()),
        "min_cosine_texts": float((texts * texts_q).sum(1).min()),
    }


def _recall_at_k(scores: np.ndarray) -> float:
    """Share of rows whose own column (row i, column i) is among their K best."""
    own = np.diag(scores)[:, None]
    rank = (scores > own).sum(axis=1)
    return float(np.mean(rank < K))
