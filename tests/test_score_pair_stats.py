"""``score.pair_statistics`` against a brute-force computation on the full similarity matrix:
ranks, CSLS neighbourhood means and best competitors (skipping duplicates), for several tiles,
through both the NumPy tile loop (the CPU's) and the torch one (accelerators')."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clipkit.errors import InputError
from clipkit.score import pair_ranks, pair_statistics
from clipkit.score import pair_stats as pair_stats_module


@pytest.fixture(params=["numpy", "torch"], autouse=True)
def tile_loop(request, monkeypatch):
    monkeypatch.setattr(pair_stats_module, "CPU_TILES", request.param == "numpy")
    return request.param


def _brute(a, b, k, a_groups, b_groups):
    full = a @ b.T
    size = full.shape[0]
    diag = full.diagonal()
    expected = {
        "rows": full.topk(k, dim=1).values.mean(1),
        "cols": full.topk(k, dim=0).values.mean(0),
    }
    best_b, best_a = [], []
    for i in range(size):
        row = [(float(full[i, j]), -j) for j in range(size) if b_groups[j] != b_groups[i]]
        best_b.append(-max(row)[1] if row else -1)
        col = [(float(full[j, i]), -j) for j in range(size) if a_groups[j] != a_groups[i]]
        best_a.append(-max(col)[1] if col else -1)
    return diag, expected, best_b, best_a


@pytest.mark.parametrize(
    ("size", "tile", "k"), [(1, 4, 10), (7, 3, 2), (50, 16, 5), (50, 64, 10), (300, 64, 10)]
)
def test_statistics_equal_brute_force(size, tile, k):
    generator = torch.Generator().manual_seed(size)
    if size > 200:
        # Small integers: every dot product is exact in float32, so the planted ties are
        # exact ties however a tile's sgemm orders its sums (ties go to the lowest index).
        a = torch.randint(-2, 3, (size, 8), generator=generator).float()
        b = a + torch.randint(-2, 3, (size, 8), generator=generator).float()
    else:
        a = F.normalize(torch.randn(size, 8, generator=generator), dim=-1)
        b = F.normalize(a + 0.8 * torch.randn(size, 8, generator=generator), dim=-1)
    a_groups = torch.arange(size)
    b_groups = torch.arange(size)
    if size > 4:  # rows 0 and 1 share an image, rows 2 and 3 a caption
        a[1], a_groups[1] = a[0], 0
        b[3], b_groups[3] = b[2], 2
    if size > 200:  # duplicates in other tiles than their first copy, and three of a kind
        a[150], a[299], a_groups[150], a_groups[299] = a[5], a[5], 5, 5
        b[201], b_groups[201] = b[70], 70
    stats = pair_statistics(a, b, k=k, a_groups=a_groups, b_groups=b_groups, tile=tile)
    diag, neighbourhood, best_b, best_a = _brute(a, b, min(k, size), a_groups, b_groups)
    torch.testing.assert_close(stats.scores, diag)
    ranks = pair_ranks(a, b)
    assert torch.equal(stats.a_to_b_rank, ranks.image_to_text)
    assert torch.equal(stats.b_to_a_rank, ranks.text_to_image)
    torch.testing.assert_close(stats.row_neighbourhood, neighbourhood["rows"])
    torch.testing.assert_close(stats.column_neighbourhood, neighbourhood["cols"])
    assert stats.best_b.tolist() == best_b and stats.best_a.tolist() == best_a
    for i, j in enumerate(best_b):
        if j >= 0:
            assert float(stats.best_b_score[i]) == pytest.approx(float(a[i] @ b[j]), abs=1e-6)


def test_duplicates_are_never_each_others_competitor():
    a = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), dim=-1)
    b = a.clone()
    stats = pair_statistics(
        a, b, a_groups=torch.tensor([0, 0, 1]), b_groups=torch.tensor([0, 0, 1])
    )
    assert stats.best_b.tolist() == [2, 2, 0]  # never the identical caption of row 0/1
    assert stats.best_a.tolist() == [2, 2, 0]


def test_mismatched_shapes_are_refused():
    with pytest.raises(InputError):
        pair_statistics(torch.zeros(3, 4), torch.zeros(2, 4))


def test_non_finite_embeddings_are_refused():
    a = F.normalize(torch.randn(4, 3), dim=-1)
    b = a.clone()
    b[2, 1] = float("nan")
    with pytest.raises(InputError, match="not finite"):
        pair_statistics(a, b)
