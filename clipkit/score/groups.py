"""Ragged groups to padded rows: the step both top-k merges use to re-rank only the lines that
gained candidates in a block (the queries of ``topk``, the rows and columns of the audit)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Groups:
    """Where each entry of a ragged list goes in a padded (len(lines), width) matrix."""

    lines: np.ndarray  # (G,) the distinct line ids, ascending
    row: np.ndarray  # (N,) each entry's row in the padded matrix
    slot: np.ndarray  # (N,) each entry's column: its position within its line's group
    width: int  # the largest group


def group_lines(line: np.ndarray) -> Groups:
    """Lay out entries whose line ids ``line`` (N,) are sorted ascending, one row per line.

    Entries keep their order within a line, so a stable sort of the padded rows breaks ties
    by that order.
    """
    lines, first, counts = np.unique(line, return_index=True, return_counts=True)
    row = np.repeat(np.arange(lines.size), counts)
    slot = np.arange(line.size) - np.repeat(first, counts)
    return Groups(lines, row, slot, int(counts.max()))
