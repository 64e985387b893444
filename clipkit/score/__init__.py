"""Scoring core: similarity, chunked top-k, pair ranks, recall, metrics and the contrastive loss.

One public function per operation, device-agnostic, with documented shapes. The package
imports nothing until a name is used: ``metrics`` is plain Python, so the torch-free runtime
(zeroshot of an embeddings folder) reads it without loading torch; ``losses``, ``retrieval``
and ``pair_stats`` run on torch. The loss backend is forced for tests through
``clipkit.score.losses.LOSS_BACKEND``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from clipkit.infra.lazy import export_lazily

if TYPE_CHECKING:  # what type checkers and editors see; at run time, imported on first use
    from clipkit.score.losses import (
        MAX_SCALE,
        contrastive_loss,
        directional_losses,
        loss_backend,
        sigmoid_loss,
        similarity,
    )
    from clipkit.score.pair_stats import PairStatistics, pair_statistics
    from clipkit.score.retrieval import (
        PairRanks,
        pair_ranks,
        rank_summary,
        recall_at_k,
        topk,
        topk_stream,
    )

__all__ = [
    "MAX_SCALE",
    "PairRanks",
    "PairStatistics",
    "contrastive_loss",
    "directional_losses",
    "loss_backend",
    "pair_ranks",
    "pair_statistics",
    "rank_summary",
    "recall_at_k",
    "sigmoid_loss",
    "similarity",
    "topk",
    "topk_stream",
]
__getattr__, __dir__ = export_lazily(__name__)
