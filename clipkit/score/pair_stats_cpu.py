"""The CPU tile loop of ``pair_statistics``, in NumPy: what the torch loop computes, 2.5x sooner.

Measured on a 2048 x 2048 tile (2 cores): the sgemm takes about 30 ms; torch's boolean sums
for the ranks, its column-wise top-k and max, and its masked copies for the competitors took
another 95 ms on top, and take about 20 ms here. The ranks are counting passes
(``np.count_nonzero``); maxima run along either axis (NumPy reduces columns without a
transposed copy); the neighbourhoods compare each value with its line's running k-th best, so
that only the few values that beat it are merged, as ``topk`` does; and same-group entries are
found by sorting and set to -inf in place while the competitors are read.
"""

from __future__ import annotations

import numpy as np
import torch

from clipkit.score.groups import group_lines

Groups = np.ndarray  # (S,) int64


def cpu_statistics(
    a: torch.Tensor,
    b: torch.Tensor,
    k: int,
    a_groups: torch.Tensor,
    b_groups: torch.Tensor,
    beaten_at: torch.Tensor,
    tile: int,
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """((a_to_b_rank, b_to_a_rank), (row, column neighbourhoods), (best_b, its score, best_a,
    its score)) of (S, D) ``a`` and ``b``, as ``pair_statistics`` defines them."""
    left, right = a.detach().float().numpy(), b.detach().float().numpy()
    a_ids, b_ids, limit = a_groups.numpy(), b_groups.numpy(), beaten_at.numpy()
    size = left.shape[0]
    a_rank, b_rank = np.zeros(size, np.int64), np.zeros(size, np.int64)
    row_top, column_top = _TopValues(size, k), _TopValues(size, k)
    best_b, best_a = _Best(size), _Best(size)
    buffer = np.empty(min(tile, size) ** 2, np.float32)
    for i in range(0, size, tile):
        rows = slice(i, min(i + tile, size))
        for j in range(0, size, tile):
            cols = slice(j, min(j + tile, size))
            block = buffer[: (rows.stop - i) * (cols.stop - j)].reshape(rows.stop - i, -1)
            np.matmul(left[rows], right[cols].T, out=block)  # (R, C)
            a_rank[rows] += np.count_nonzero(block > limit[rows, None], axis=1)
            b_rank[cols] += np.count_nonzero(block > limit[None, cols], axis=0)
            row_top.offer(block, rows, axis=1)
            column_top.offer(block, cols, axis=0)
            best_b.offer(block, rows, j, b_ids[rows], b_ids[cols])
            best_a.offer(block.T, cols, i, a_ids[cols], a_ids[rows])
    as_torch = torch.from_numpy
    return (
        (as_torch(a_rank), as_torch(b_rank)),
        (as_torch(row_top.mean()), as_torch(column_top.mean())),
        (*best_b.result(), *best_a.result()),
    )


class _TopValues:
    """The k largest values seen on each line: the rows, or the columns, of the tiles."""

    def __init__(self, lines: int, k: int) -> None:
        self.k = k
        self.values = np.full((lines, k), -np.inf, np.float32)  # unordered within a line
        self.kth = np.full(lines, -np.inf, np.float32)  # each line's k-th best so far

    def offer(self, block: np.ndarray, lines: slice, axis: int) -> None:
        """Merge C-ordered (R, C) ``block``, whose lines run along ``axis`` (1: rows, 0: columns);
        line l of the block is line ``lines.start + l`` here."""
        kth = self.kth[lines]
        if np.isneginf(kth).all():  # nothing seen yet: every value is a candidate
            self._keep(np.arange(lines.start, lines.stop), block if axis == 1 else block.T)
            return
        # Few values beat the k-th best once a tile is in (about k·C/seen per line). 1-D
        # positions: np.nonzero on a 2-D mask was measured 14x slower than np.flatnonzero.
        found = np.flatnonzero(block > (kth[:, None] if axis == 1 else kth[None, :]))
        if found.size == 0:
            return
        line = found // block.shape[1] if axis == 1 else found % block.shape[1]
        values = block.ravel()[found]
        if axis == 0:  # group by column; a stable sort keeps each column's values together
            order = np.argsort(line, kind="stable")
            line, values = line[order], values[order]
        groups = group_lines(line)
        candidates = np.full((groups.lines.size, groups.width), -np.inf, np.float32)
        candidates[groups.row, groups.slot] = values
        self._keep(groups.lines + lines.start, candidates)

    def mean(self) -> np.ndarray:
        return self.values.mean(axis=1, dtype=np.float64).astype(np.float32)

    def _keep(self, lines: np.ndarray, candidates: np.ndarray) -> None:
        pooled = np.concatenate([self.values[lines], candidates], axis=1)
        top = -np.partition(-pooled, self.k - 1, axis=1)[:, : self.k]
        self.values[lines] = top
        self.kth[lines] = top.min(axis=1)


class _Best:
    """Each line's highest value among columns of another group, and its (lowest) index."""

    def __init__(self, lines: int) -> None:
        self.score = np.full(lines, -np.inf, np.float32)
        self.index = np.full(lines, -1, np.int64)

    def offer(
        self,
        block: np.ndarray,
        lines: slice,
        offset: int,
        line_groups: Groups,
        column_groups: Groups,
    ) -> None:
        """(L, C) ``block``: line l is ``lines.start + l``, column c is index ``offset + c``.

        Same-group entries are set to -inf for the reading and then restored, so no masked
        copy of the tile is made; ``block`` may be a transposed view.
        """
        line, column = _same_group(line_groups, column_groups)
        kept = block[line, column]
        block[line, column] = -np.inf
        try:
            best = block.max(axis=1)
            # Strictly better only: tiles arrive in index order, so ties keep the lower index.
            better = np.flatnonzero(best > self.score[lines])
            if better.size:  # argmax returns the first of equal maxima: the lowest index
                winners = np.ascontiguousarray(block[better]).argmax(axis=1)
                self.score[lines][better] = best[better]
                self.index[lines][better] = winners + offset
        finally:
            block[line, column] = kept

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        index = np.where(np.isneginf(self.score), -1, self.index)
        return torch.from_numpy(index), torch.from_numpy(self.score)


def _same_group(line_groups: Groups, column_groups: Groups) -> tuple[np.ndarray, np.ndarray]:
    """(line, column) positions whose groups are equal, found by sorting, not an L x C test."""
    order = np.argsort(column_groups, kind="stable")
    ordered = column_groups[order]
    low = np.searchsorted(ordered, line_groups, side="left")
    counts = np.searchsorted(ordered, line_groups, side="right") - low
    total = int(counts.sum())
    line = np.repeat(np.arange(line_groups.size), counts)
    starts = np.repeat(low - (np.cumsum(counts) - counts), counts)
    return line, order[np.arange(total) + starts]
