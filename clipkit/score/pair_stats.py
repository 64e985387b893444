"""Everything audit needs to know about each pair, from one tiled pass over the S×S similarities:
ranks, neighbourhood means (CSLS hubness correction) and the best competitor on each side."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clipkit.errors import InputError
from clipkit.score.pair_stats_cpu import cpu_statistics
from clipkit.score.retrieval import RANK_TOLERANCE

# The CPU runs the tile loop in NumPy (pair_stats_cpu); False forces the torch loop, which
# accelerators use, so that tests can check both paths against the same definition.
CPU_TILES = True


@dataclass(frozen=True)
class PairStatistics:
    """Per pair i (``a[i]`` with ``b[i]``); all tensors (S,).

    ``*_rank``: how many candidates beat the true partner (0: it ranks first), as ``pair_ranks``.
    ``*_neighbourhood``: mean of the k largest similarities of ``a[i]`` to all of ``b`` (row) or
    of ``b[i]`` to all of ``a`` (column): CSLS's ``r`` terms (Conneau et al., 2018).
    ``best_b[i]``: the ``b`` row most similar to ``a[i]`` among those of another ``b`` group
    (another caption text), -1 if there is none; ``best_a`` likewise for ``b[i]``.
    """

    scores: torch.Tensor
    a_to_b_rank: torch.Tensor
    b_to_a_rank: torch.Tensor
    row_neighbourhood: torch.Tensor
    column_neighbourhood: torch.Tensor
    best_b: torch.Tensor
    best_b_score: torch.Tensor
    best_a: torch.Tensor
    best_a_score: torch.Tensor


def pair_statistics(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    k: int = 10,
    a_groups: torch.Tensor | None = None,
    b_groups: torch.Tensor | None = None,
    tile: int = 2048,
) -> PairStatistics:
    """Ranks, neighbourhoods and best competitors of paired rows, in O(S·(D + k) + tile²) memory.

    Args:
        a: (S, D) first side (images), unit norm; row i pairs with ``b[i]``.
        b: (S, D) second side (captions), unit norm.
        k: neighbourhood size (at most S).
        a_groups, b_groups: (S,) int64 ids; rows with equal ids are the same content (duplicate
            images, identical captions) and never count as each other's competitor. Default:
            every row is its own group.
    """
    if a.shape != b.shape or a.ndim != 2 or a.shape[0] == 0:
        raise InputError(
            f"Paired embeddings must have equal non-empty 2-D shapes, got "
            f"{tuple(a.shape)} and {tuple(b.shape)}.",
            "Each row of one side pairs with the same row of the other.",
        )
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise InputError(
            "Some embeddings are not finite (NaN or inf).",
            "Re-embed those inputs: their vectors are corrupt.",
        )
    size, device = a.shape[0], a.device
    k = max(1, min(k, size))
    own = torch.arange(size, device=device)
    a_groups = own if a_groups is None else a_groups.to(device)
    b_groups = own if b_groups is None else b_groups.to(device)
    scores = (a * b).sum(dim=1).float()
    beaten_at = scores + RANK_TOLERANCE * (a.float().norm(dim=1) * b.float().norm(dim=1))
    if device.type == "cpu" and CPU_TILES:
        ranks, tops, best = cpu_statistics(a, b, k, a_groups, b_groups, beaten_at, tile)
        return PairStatistics(scores, *ranks, *tops, *best)
    a_rank = torch.zeros(size, dtype=torch.int64, device=device)
    b_rank = torch.zeros_like(a_rank)
    row_top = torch.full((size, k), -torch.inf, device=device)
    column_top = torch.full((size, k), -torch.inf, device=device)
    best_b = torch.full((size,), -1, dtype=torch.int64, device=device)
    best_a = torch.full_like(best_b, -1)
    best_b_score = torch.full((size,), -torch.inf, device=device)
    best_a_score = torch.full_like(best_b_score, -torch.inf)
    for i in range(0, size, tile):
        rows = slice(i, i + tile)
        for j in range(0, size, tile):
            cols = slice(j, j + tile)
            block = (a[rows] @ b[cols].T).float()  # (R, C)
            a_rank[rows] += (block > beaten_at[rows, None]).sum(dim=1)
            b_rank[cols] += (block > beaten_at[None, cols]).sum(dim=0)
            row_top[rows] = _merge_top(row_top[rows], block, k)
            column_top[cols] = _merge_top(column_top[cols], block.T, k)
            other_b = block.masked_fill(b_groups[None, cols] == b_groups[rows, None], -torch.inf)
            _keep_best(best_b_score, best_b, rows, *other_b.max(dim=1), offset=j)
            other_a = block.masked_fill(a_groups[rows, None] == a_groups[None, cols], -torch.inf)
            _keep_best(best_a_score, best_a, cols, *other_a.max(dim=0), offset=i)
    best_b[best_b_score == -torch.inf] = -1
    best_a[best_a_score == -torch.inf] = -1
    return PairStatistics(
        scores=scores,
        a_to_b_rank=a_rank,
        b_to_a_rank=b_rank,
        row_neighbourhood=row_top.mean(dim=1),
        column_neighbourhood=column_top.mean(dim=1),
        best_b=best_b,
        best_b_score=best_b_score,
        best_a=best_a,
        best_a_score=best_a_score,
    )


def _merge_top(running: torch.Tensor, block: torch.Tensor, k: int) -> torch.Tensor:
    """The k largest of each row of ``running`` (R, k) and ``block`` (R, C)."""
    candidates = torch.cat([running, block.topk(min(k, block.shape[1]), dim=1).values], dim=1)
    return candidates.topk(k, dim=1).values


def _keep_best(
    best_score: torch.Tensor,
    best_index: torch.Tensor,
    where: slice,
    values: torch.Tensor,
    indices: torch.Tensor,
    *,
    offset: int,
) -> None:
    # Strictly better only: blocks arrive in index order, so ties keep the lower index.
    better = values > best_score[where]
    best_score[where] = torch.where(better, values, best_score[where])
    best_index[where] = torch.where(better, indices + offset, best_index[where])
