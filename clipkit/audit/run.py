"""``clipkit audit``: find image–caption pairs whose caption does not describe the image.

Each pair gets its cosine, its ranks (its caption among all captions for its image, its image
among all images for its caption), the margin to the best competing caption, and a mismatch
score: the CSLS deficit ``r_image + r_caption - 2·cos``, the cosine corrected for how close the
image and the caption are to everything else (hubness). Shuffled pairs of the same dataset give
the scores of unrelated pairs: from them and the dataset's, the share of mismatched pairs and
each pair's probability of being one (``clipkit.audit.mixture``), flagged at 0.5 by default;
``--fpr`` instead flags so that that share of unrelated pairs passes as matched, whatever the
model. Suggestions are the best other caption and image.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from clipkit import score, store
from clipkit.audit.calibration import Calibration, calibrate, shuffled_null, suspicion
from clipkit.audit.config import AuditConfig, preflight
from clipkit.audit.pairing import stored_pairs
from clipkit.config import RECALL_KS
from clipkit.errors import InputError, SkippedInputsError
from clipkit.infra.progress import ProgressCallback, ProgressReport
from clipkit.inputs.filenames import as_text, locate, reading_base
from clipkit.inputs.pairs import read_pairs
from clipkit.models.runtime import RuntimeChoice, load_encoder, load_matching_encoder
from clipkit.score import pair_statistics
from clipkit.score.arrays import as_numpy


@dataclass(frozen=True)
class PairAudit:
    """One pair's scores; ranks are 0 when the partner ranks first."""

    image: str
    caption: str
    cosine: float
    caption_rank: int  # captions scoring higher than this one for this image
    image_rank: int  # images scoring higher than this one for this caption
    margin: float | None  # cosine minus the best other caption's (None: no other caption)
    mismatch: float  # CSLS deficit: higher is more suspicious
    probability: float  # that the pair is mismatched (its local false discovery rate)
    flagged: bool
    suggested_caption: str | None
    suggested_caption_score: float | None
    suggested_image: str | None
    suggested_image_score: float | None
    truncated: bool = False
    image_path: str = ""  # the image's uri as a path that opens from here (filenames.locate)
    # A SigLIP model's own probability that image and caption match, σ(t·cos + b); None for
    # a model trained with softmax (its scores are not probabilities of a pair on its own).
    match_probability: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AuditResult:
    source: str
    input_kind: str  # "pairs" or "embeddings"
    model: str
    pairs: tuple[PairAudit, ...]
    calibration: Calibration
    failures: tuple[tuple[str, str, str], ...]
    long_captions: int
    long_caption_mode: str
    duplicate_images: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]  # (files, captions)
    duplicate_captions: tuple[tuple[str, tuple[str, ...]], ...]  # (caption, images)
    runtime: RuntimeChoice = RuntimeChoice("torch", "")
    logit_bias: float | None = None  # a SigLIP model's b: pairs have a match_probability

    @functools.cached_property  # sorted once: the CLI and reports ask several times
    def flagged(self) -> list[PairAudit]:
        """Flagged pairs, worst first."""
        rule = self.calibration.statistic
        worst = sorted(
            self.pairs, key=lambda p: suspicion(rule, p.cosine, p.mismatch, p.probability)
        )
        return [p for p in worst if p.flagged]

    def headline(self) -> str:
        """In plain words: about how many pairs look mismatched, and how many were flagged."""
        c = self.calibration
        estimate, low, high = c.mismatched_pairs(len(self.pairs))
        words = (
            f"About {estimate} of {len(self.pairs)} pairs ({c.mismatched_share:.1%}; 95 % "
            f"interval {low}–{high}) look mismatched; {len(self.flagged)} flagged "
            f"{c.rule()}"
        )
        if c.capped:
            words += f" (the {c.max_flags} most suspicious; {c.capped} more meet the rule)"
        return words + "."

    def summary(self) -> dict[str, Any]:
        c = self.calibration
        return {
            "source": self.source,
            "model": self.model,
            "runtime": self.runtime.runtime,
            "pairs": len(self.pairs),
            "flagged": len(self.flagged),
            "skipped": len(self.failures),
            "threshold": c.threshold,
            "statistic": c.statistic,
            "method": c.method,
            "fpr": c.fpr,
            "null_pass_rate": c.null_pass_rate,
            "mismatched_share": c.mismatched_share,
            "mismatched_interval": list(c.mismatched_interval),
            "max_flags": c.max_flags,
            "long_captions": self.long_captions,
            **self.retrieval(),
        }

    def retrieval(self) -> dict[str, float]:
        """Recall@1/5/10 both ways over the pairs (each image's caption among its top k
        captions, and the reverse), as CLIP_benchmark's retrieval task reports for one
        caption per image, and the mean 1-based rank; from the pairs' ranks."""
        figures: dict[str, float] = {}
        caption_ranks = [p.caption_rank for p in self.pairs]
        image_ranks = [p.image_rank for p in self.pairs]
        for direction, ranks in (("image_to_text", caption_ranks), ("text_to_image", image_ranks)):
            ranked = torch.tensor(ranks)
            for k, share in score.recall_at_k(ranked, RECALL_KS).items():
                figures[f"{direction}_r{k}"] = share
            figures[f"{direction}_mean_rank"] = score.rank_summary(ranked)["mean_rank"]
        return figures

    def as_dict(self) -> dict[str, Any]:
        return {
            "summary": self.summary(),
            "calibration": asdict(self.calibration),
            "duplicate_images": [
                {"images": list(f), "captions": list(c)} for f, c in self.duplicate_images
            ],
            "duplicate_captions": [
                {"caption": c, "images": list(i)} for c, i in self.duplicate_captions
            ],
            "failures": [
                dict(zip(("uri", "stage", "error"), f, strict=True)) for f in self.failures
            ],
            "pairs": [p.as_dict() for p in self.pairs],
        }


@dataclass
class _Encoded:
    """Pairs ready to score: row i is ``images[i]`` with ``captions[i]``."""

    images: list[str]
    captions: list[str]
    image_vectors: torch.Tensor  # (S, D)
    caption_vectors: torch.Tensor  # (S, D)
    image_ids: list[str]
    truncated: list[bool]
    failures: list[tuple[str, str, str]]
    scale: float = 1.0  # the model's exp(logit_scale)
    bias: float | None = None  # and its logit_bias, when it was trained with SigLIP's loss


def audit(config: AuditConfig, progress: ProgressCallback | None = None) -> AuditResult:
    """Score every pair of ``config.data`` and flag the mismatched ones.

    Raises:
        InputError: bad options, no usable pair, or fewer than two pairs.
    """
    result = _audit(config, progress)
    if config.strict and result.failures:
        raise SkippedInputsError(len(result.failures), None, result)
    return result


def _audit(config: AuditConfig, progress: ProgressCallback | None) -> AuditResult:
    preflight(config)
    path = Path(config.data).expanduser()
    if path.is_dir() and store.list_shards(path):
        kind, encoded, model, runtime = "embeddings", *_from_embeddings(config, path)
    else:
        kind, encoded, model, runtime = "pairs", *_from_pairs(config, path, progress)
    if len(encoded.images) < 2:
        raise InputError(
            f"{path} holds {len(encoded.images)} usable pair(s); auditing needs 2+.",
            "Auditing compares each pair with the others in the dataset.",
        )
    image_groups = _groups(encoded.image_ids)
    caption_groups = _groups([" ".join(c.casefold().split()) for c in encoded.captions])
    stats = pair_statistics(
        encoded.image_vectors,
        encoded.caption_vectors,
        k=config.neighbours,
        a_groups=image_groups,
        b_groups=caption_groups,
    )
    mismatch = stats.row_neighbourhood + stats.column_neighbourhood - 2 * stats.scores
    null_cosine, null_mismatch = shuffled_null(
        encoded.image_vectors, encoded.caption_vectors, stats, (image_groups, caption_groups),
        config.seed,
    )  # fmt: skip
    calibration, flagged, probability = calibrate(
        config, stats.scores, mismatch, null_cosine, null_mismatch
    )
    pairs, base = [], reading_base(store.read_base(path)) if kind == "embeddings" else None
    matching = (
        None
        if encoded.bias is None
        else torch.sigmoid(encoded.scale * stats.scores.float() + encoded.bias).tolist()
    )
    for i in range(len(encoded.images)):
        best_b, best_a = int(stats.best_b[i]), int(stats.best_a[i])
        pairs.append(
            PairAudit(
                image=encoded.images[i],
                caption=encoded.captions[i],
                cosine=float(stats.scores[i]),
                caption_rank=int(stats.a_to_b_rank[i]),
                image_rank=int(stats.b_to_a_rank[i]),
                margin=float(stats.scores[i] - stats.best_b_score[i]) if best_b >= 0 else None,
                mismatch=float(mismatch[i]),
                probability=float(probability[i]),
                flagged=bool(flagged[i]),
                suggested_caption=encoded.captions[best_b] if best_b >= 0 else None,
                suggested_caption_score=float(stats.best_b_score[i]) if best_b >= 0 else None,
                suggested_image=encoded.images[best_a] if best_a >= 0 else None,
                suggested_image_score=float(stats.best_a_score[i]) if best_a >= 0 else None,
                truncated=encoded.truncated[i],
                image_path=locate(encoded.images[i], base),
                match_probability=None if matching is None else matching[i],
            )
        )
    duplicate_images, duplicate_captions = _duplicates(encoded, image_groups, caption_groups)
    return AuditResult(
        source=as_text(path),
        input_kind=kind,
        model=model,
        pairs=tuple(pairs),
        calibration=calibration,
        failures=tuple(encoded.failures),
        long_captions=sum(encoded.truncated),
        long_caption_mode=config.long_captions,
        duplicate_images=duplicate_images,
        duplicate_captions=duplicate_captions,
        runtime=runtime,
        logit_bias=encoded.bias,
    )


def _from_pairs(
    config: AuditConfig, path: Path, progress: ProgressCallback | None
) -> tuple[_Encoded, str, RuntimeChoice]:
    source = read_pairs(
        path,
        image_column=config.image_column,
        text_column=config.text_column,
        include_hidden=config.include_hidden,
    )
    failures = list(source.skipped)
    if not source.pairs:
        raise InputError(
            f"{path} holds no usable image–caption pair ({len(failures)} skipped).",
            "Give each image a same-name .txt caption, or use a table.",
        )
    from clipkit.inputs.pipeline import default_workers, encode_image_files

    encoder, runtime = load_encoder(
        config.chosen_spec,
        device=config.device,
        runtime=config.runtime,
        bulk=True,
    )
    paths = list(dict.fromkeys(pair.image for pair in source.pairs))
    images = encode_image_files(
        encoder,
        paths,
        batch_size=config.batch_size,
        workers=default_workers() if config.workers is None else config.workers,
        progress=(lambda done: progress(ProgressReport("images", done, len(paths))))
        if progress
        else None,
    )
    failures += images.failures
    found = {
        paths[row]: (vector, images.ids[n])
        for n, (row, vector) in enumerate(
            zip(images.rows, torch.from_numpy(images.vectors), strict=True)
        )
    }
    rows = [(p.image, c) for p in source.pairs if p.image in found for c in p.captions]
    captions = [c for _, c in rows]
    vectors, truncated = _encode_captions(encoder, captions, config, progress)
    image_vectors = torch.stack([found[image][0] for image, _ in rows]) if rows else None
    if image_vectors is not None and config.long_captions == "chunk":
        vectors = _best_windows(encoder, captions, truncated, image_vectors, vectors)
    encoded = _Encoded(
        images=[image for image, _ in rows],
        captions=captions,
        image_vectors=image_vectors if image_vectors is not None else torch.empty(0, 1),
        caption_vectors=vectors,
        image_ids=[found[image][1] for image, _ in rows],
        truncated=truncated,
        failures=failures,
        scale=encoder.logit_scale,
        bias=encoder.logit_bias,
    )
    return encoded, encoder.spec, runtime


def _encode_captions(
    encoder: Any,  # either runtime's
    captions: Sequence[str],
    config: AuditConfig,
    progress: ProgressCallback | None,
) -> tuple[torch.Tensor, list[bool]]:
    unique = list(dict.fromkeys(captions))
    parts = []
    for start in range(0, len(unique), config.batch_size):
        vectors = encoder.encode_texts(unique[start : start + config.batch_size])
        parts.append(torch.from_numpy(as_numpy(vectors)))
        if progress:
            done = min(start + config.batch_size, len(unique))
            progress(ProgressReport("captions", done, len(unique)))
    vectors = torch.cat(parts) if parts else torch.empty(0, encoder.embed_dim)
    position = {text: n for n, text in enumerate(unique)}
    long = dict(zip(unique, encoder.truncated(unique), strict=True)) if unique else {}
    return vectors[[position[c] for c in captions]], [long[c] for c in captions]


def _best_windows(
    encoder: Any,  # either runtime's
    captions: Sequence[str],
    truncated: Sequence[bool],
    image_vectors: torch.Tensor,
    vectors: torch.Tensor,
) -> torch.Tensor:
    """For each long caption, the embedding of its context-sized window that best matches its
    own image (the caption's score is the max over windows)."""
    vectors = vectors.clone()
    for row, caption in enumerate(captions):
        if truncated[row]:
            windows = torch.from_numpy(as_numpy(encoder.encode_texts(_windows(encoder, caption))))
            vectors[row] = windows[int((windows @ image_vectors[row]).argmax())]
    return vectors


def _windows(encoder: Any, text: str) -> list[str]:
    """Consecutive word windows of ``text``, each as long as fits the model's context."""
    windows: list[str] = []
    current: list[str] = []
    for word in text.split():
        if current and encoder.truncated([" ".join([*current, word])])[0]:
            windows.append(" ".join(current))
            current = []
        current.append(word)
    return [*windows, " ".join(current)] if current else windows


def _from_embeddings(config: AuditConfig, folder: Path) -> tuple[_Encoded, str, RuntimeChoice]:
    """Pairs of an embeddings folder (see :func:`stored_pairs`), duplicates included: a copy
    of an image or a caption has no row of its own, only a line in ``_aliases.parquet``."""
    stamp = store.read_stamp(folder)
    assert stamp is not None
    # Only the tokenizer is used (to count long captions): nothing is encoded, so the CPU will
    # do, and an ONNX export (no open_clip) loads in a fraction of the time.
    encoder, runtime = load_matching_encoder(
        stamp.spec, stamp.fingerprint, spec=config.given_spec, device="cpu", runtime=config.runtime
    )
    rows = store.with_aliases(store.read_vectors(folder, meta=True), folder)
    picked, failures = stored_pairs(rows)
    if not picked:
        raise InputError(
            f"{folder} holds no image row with a caption: no text row for a .txt sidecar, "
            "and no caption row that records its image.",
            "Embed a folder of images with same-name .txt captions, or a table of image "
            "paths and captions (before or after the folder), or pass the pair source itself.",
        )
    vectors = torch.from_numpy(rows.vectors)
    captions = [rows.texts[t] or "" for _, t in picked]
    encoded = _Encoded(
        images=[rows.uris[i] for i, _ in picked],
        captions=captions,
        image_vectors=vectors[[i for i, _ in picked]],
        caption_vectors=vectors[[t for _, t in picked]],
        image_ids=[rows.ids[i] for i, _ in picked],
        truncated=encoder.truncated(captions),
        failures=failures,
        scale=encoder.logit_scale,
        bias=encoder.logit_bias,
    )
    if config.long_captions == "chunk" and any(encoded.truncated):
        raise InputError(
            "--long-captions chunk needs the captions' text encoded again.",
            "Audit the pair source itself (the folder or table), not embeddings.",
        )
    return encoded, encoder.spec, runtime


def _groups(keys: Sequence[str]) -> torch.Tensor:
    """(S,) int64: equal keys share a group id."""
    ids: dict[str, int] = {}
    return torch.tensor([ids.setdefault(key, len(ids)) for key in keys], dtype=torch.int64)


def _duplicates(encoded: _Encoded, image_groups: torch.Tensor, caption_groups: torch.Tensor):
    """Identical image files under different captions; one caption on different images."""
    by_image, by_caption = defaultdict(list), defaultdict(list)
    for row, group in enumerate(image_groups.tolist()):
        by_image[group].append(row)
    for row, group in enumerate(caption_groups.tolist()):
        by_caption[group].append(row)
    duplicate_images = []
    for rows in by_image.values():
        files = tuple(dict.fromkeys(encoded.images[r] for r in rows))
        captions = tuple(dict.fromkeys(encoded.captions[r] for r in rows))
        if len(files) > 1 and len(captions) > 1:
            duplicate_images.append((files, captions))
    duplicate_captions = []
    for rows in by_caption.values():
        if len({int(image_groups[r]) for r in rows}) > 1:
            images = tuple(dict.fromkeys(encoded.images[r] for r in rows))
            duplicate_captions.append((encoded.captions[rows[0]], images))
    return tuple(duplicate_images), tuple(duplicate_captions)
