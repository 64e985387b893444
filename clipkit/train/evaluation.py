"""Validation during training: contrastive loss, retrieval recall and rank, zero-shot top-1.

Images are preprocessed with the model's evaluation transform (no augmentation) and each
image is paired with its first caption, so that the numbers are comparable across epochs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from clipkit.config import RECALL_KS
from clipkit.infra import distributed
from clipkit.infra.progress import ProgressReport
from clipkit.inputs import pipeline
from clipkit.inputs.classes import ClassTree
from clipkit.inputs.pairs import Pair
from clipkit.models.openclip import Encoder
from clipkit.score import contrastive_loss, pair_ranks, rank_summary, recall_at_k, sigmoid_loss
from clipkit.score.zeroshot import SIMPLE_TEMPLATES, class_embeddings, classify, fill_templates
from clipkit.train.checkpointing import Checkpointer
from clipkit.train.session import Session
from clipkit.train.state import MetricsLog, ResumeState


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
        recalls = [
            getattr(self, f"{d}_r{k}")
            for d in ("image_to_text", "text_to_image")
            for k in RECALL_KS
        ]
        return sum(recalls) / len(recalls)

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Evaluation:
        """Rebuild one from its ``metrics.jsonl`` line (which carries step and epoch too)."""
        return cls(**{f.name: record[f.name] for f in fields(cls) if f.name in record})


def evaluate(
    encoder: Encoder,
    pairs: Sequence[Pair],
    *,
    weight: float,
    logit_scale: torch.Tensor,
    objective: str = "clip",
    logit_bias: torch.Tensor | None = None,
    classes: ClassTree | None = None,
    batch_size: int = 256,
    workers: int = 0,
) -> Evaluation:
    """Metrics of ``encoder`` (in its current state) on validation pairs and a class tree;
    the loss is the training objective's (``"clip"`` or ``"siglip"``, which needs the bias)."""
    encoded = pipeline.encode_image_files(
        encoder, [pair.image for pair in pairs], batch_size=batch_size, workers=workers
    )
    image = torch.from_numpy(encoded.vectors).to(encoder.device.value)
    text = _encode_texts(encoder, [pairs[i].captions[0] for i in encoded.rows], batch_size)
    scale = logit_scale.detach().float().to(image.device)
    if objective == "siglip":
        assert logit_bias is not None, "SigLIP's loss needs the model's logit bias"
        loss = sigmoid_loss(image, text, scale, logit_bias.detach().float().to(image.device))
    else:
        loss = contrastive_loss(image, text, scale, weight=weight)
    ranks = pair_ranks(image, text)
    i2t, t2i = (
        recall_at_k(ranks.image_to_text, RECALL_KS),
        recall_at_k(ranks.text_to_image, RECALL_KS),
    )
    zeroshot = None if classes is None else zeroshot_top1(encoder, classes, batch_size, workers)
    return Evaluation(
        pairs=len(encoded.rows),
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
    encoded = pipeline.encode_image_files(
        encoder, classes.images, batch_size=batch_size, workers=workers
    )
    _, best = classify(encoded.vectors, weights, encoder.logit_scale, 1)
    hits = [classes.targets[row] == int(b) for row, b in zip(encoded.rows, best[:, 0], strict=True)]
    return sum(hits) / max(len(hits), 1)


def _encode_texts(encoder: Encoder, texts: Sequence[str], batch_size: int) -> torch.Tensor:
    parts = [
        encoder.encode_texts(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)
    ]
    return torch.cat(parts)


class EpochEvaluation:
    """The evaluation hook a run calls at the end of each epoch: evaluate on the validation
    pairs (main rank), log it, keep ``best`` when the score improves, report progress."""

    def __init__(
        self,
        session: Session,
        log: MetricsLog | None,
        checkpointer: Checkpointer,
        evaluations: list[Evaluation],
    ) -> None:
        self.session = session
        self.log = log
        self.checkpointer = checkpointer
        self.evaluations = evaluations  # every evaluation of the run, earlier ones included

    def __call__(self, state: ResumeState) -> None:
        session = self.session
        if session.data.val and session.world.is_main:
            self._evaluate(state)
        distributed.barrier(session.world)  # the other ranks wait for it

    def _evaluate(self, state: ResumeState) -> None:
        session, model = self.session, self.session.model
        session.progress(ProgressReport("evaluate", 0, 1))
        model.eval()
        result = evaluate(
            session.encoder,
            session.data.val,
            weight=session.config.weight,
            logit_scale=model.logit_scale,
            objective=session.settings["loss"],
            logit_bias=getattr(model, "logit_bias", None),
            classes=session.classes,
            workers=min(session.workers, 2),
        )
        model.train()
        self.evaluations.append(result)
        assert self.log is not None  # the main rank holds the log
        epoch = session.schedule.epoch_of(state.step - 1)
        self.log.write({"kind": "eval", "step": state.step, "epoch": epoch, **result.as_dict()})
        if result.score > state.best_score:
            state.best_score = result.score
            self.checkpointer.save_best(state)
        figures = {"val_loss": result.loss, "val_recall": result.score}
        session.progress(ProgressReport("evaluate", 1, 1, figures))
