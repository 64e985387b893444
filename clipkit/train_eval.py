"""Validation during training: contrastive loss, retrieval recall and rank, zero-shot top-1.

Images are preprocessed with the model's evaluation transform (no augmentation) and each
image is paired with its first caption, so that the numbers are comparable across epochs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch.utils.data import DataLoader, Dataset

from clipkit.classes import SIMPLE_TEMPLATES, ClassTree, class_embeddings, fill_templates
from clipkit.decode import DecodeError, decode_image
from clipkit.models import Encoder
from clipkit.pairs import Pair
from clipkit.pipeline import read_bytes
from clipkit.score import contrastive_loss, pair_ranks, rank_summary, recall_at_k

RECALL_KS = (1, 5, 10)


@dataclass(frozen=True)
class Evaluation:
    """Validation metrics after one epoch; recall as a fraction in [0, 1]."""

    pairs: int
    loss: float
    image_to_text_r1: float
    image_to_text_r5: float
    image_to_text_r10: float
    text_to_image_r1: float
    text_to_image_r5: float
    text_to_image_r10: float
    image_to_text_mean_rank: float
    text_to_image_mean_rank: float
    zeroshot_top1: float | None = None

    @property
    def score(self) -> float:
        """What ``best`` maximises: the mean of the six recalls (retrieval's "rsum" / 6)."""
        recalls = [getattr(self, f"{d}_r{k}") for d in ("image_to_text", "text_to_image")
                   for k in RECALL_KS]  # fmt: skip
        return sum(recalls) / len(recalls)

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def evaluate(
    encoder: Encoder,
    pairs: Sequence[Pair],
    *,
    weight: float,
    logit_scale: torch.Tensor,
    classes: ClassTree | None = None,
    batch_size: int = 256,
    workers: int = 0,
) -> Evaluation:
    """Metrics of ``encoder`` (in its current state) on validation pairs and a class tree."""
    images = encode_image_files(encoder, [pair.image for pair in pairs], batch_size, workers)
    kept = [i for i, row in enumerate(images) if row is not None]
    image = torch.stack([images[i] for i in kept])
    text = _encode_texts(encoder, [pairs[i].captions[0] for i in kept], batch_size)
    loss = contrastive_loss(
        image, text, logit_scale.detach().float().to(image.device), weight=weight
    )
    ranks = pair_ranks(image, text)
    i2t, t2i = (
        recall_at_k(ranks.image_to_text, RECALL_KS),
        recall_at_k(ranks.text_to_image, RECALL_KS),
    )
    zeroshot = None if classes is None else zeroshot_top1(encoder, classes, batch_size, workers)
    return Evaluation(
        pairs=len(kept),
        loss=float(loss),
        **{f"image_to_text_r{k}": i2t[k] for k in RECALL_KS},
        **{f"text_to_image_r{k}": t2i[k] for k in RECALL_KS},
        image_to_text_mean_rank=rank_summary(ranks.image_to_text)["mean_rank"],
        text_to_image_mean_rank=rank_summary(ranks.text_to_image)["mean_rank"],
        zeroshot_top1=zeroshot,
    )


def zeroshot_top1(encoder: Encoder, classes: ClassTree, batch_size: int, workers: int) -> float:
    """Share of class-tree images whose best prompt-ensembled class is the true one."""
    weights = class_embeddings(
        encoder.encode_texts, fill_templates(classes.labels, SIMPLE_TEMPLATES)
    )
    images = encode_image_files(encoder, classes.images, batch_size, workers)
    hits = total = 0
    for row, target in zip(images, classes.targets, strict=True):
        if row is not None:
            total += 1
            hits += int(int((row @ weights.T).argmax()) == target)
    return hits / max(total, 1)


def encode_image_files(
    encoder: Encoder, paths: Sequence[str], batch_size: int, workers: int
) -> list[torch.Tensor | None]:
    """Unit-norm embeddings (D,) of image files, None where one cannot be decoded."""
    dataset = _EvalImages(paths, encoder.preprocess_image, encoder.image_size[0])
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=list,
        generator=torch.Generator(),
    )  # leave the global random stream alone
    rows: list[torch.Tensor | None] = []
    for batch in loader:
        pixels = [p for p in batch if p is not None]
        encoded = iter(encoder.encode_images(torch.stack(pixels)) if pixels else [])
        rows.extend(next(encoded) if p is not None else None for p in batch)
    return rows


def _encode_texts(encoder: Encoder, texts: Sequence[str], batch_size: int) -> torch.Tensor:
    parts = [
        encoder.encode_texts(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)
    ]
    return torch.cat(parts)


class _EvalImages(Dataset):
    def __init__(self, paths: Sequence[str], preprocess, size: int) -> None:
        self.paths, self.preprocess, self.size = list(paths), preprocess, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor | None:
        try:
            return self.preprocess(decode_image(read_bytes(self.paths[index]), min_side=self.size))
        except DecodeError:
            return None
