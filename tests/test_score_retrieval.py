"""Chunked top-k, pair ranks and recall against full-matrix definitions and hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipkit import score
from clipkit.errors import InputError
from clipkit.score.retrieval import RANK_TOLERANCE


def _unit(*shape, seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=generator, dtype=dtype), dim=-1)


def _integers(*shape, seed=0):
    """Small integer vectors: every dot product is exact in float32, so planted ties are ties."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(-3, 4, shape, generator=generator).float()


def _full_topk(queries, keys, k):
    """Definition: sort the whole score matrix, ties in index order (a stable sort).

    Each score is summed elementwise in float64, the same way for every pair, so identical
    keys get identical scores (a float64 matmul can round copies differently by position).
    """
    scores = (queries.double()[:, None, :] * keys.double()[None, :, :]).sum(-1)
    order = torch.sort(scores, dim=1, descending=True, stable=True)
    return order.values[:, :k], order.indices[:, :k]


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000, None])
@pytest.mark.parametrize("k", [1, 5, 50])
def test_topk_equals_the_full_matrix(chunk, k):
    queries, keys = _unit(9, 16, seed=1), _unit(300, 16, seed=2)
    scores, indices = score.topk(queries, keys, k, chunk=chunk)
    want_scores, want_indices = _full_topk(queries, keys, k)
    assert torch.equal(indices, want_indices)
    torch.testing.assert_close(scores.double(), want_scores, rtol=1e-5, atol=1e-6)
    assert indices.dtype == torch.int64 and scores.dtype == torch.float32


def test_topk_matches_torch_topk_values():
    queries, keys = _unit(4, 32, seed=3), _unit(1000, 32, seed=4)
    scores, _ = score.topk(queries, keys, 10, chunk=128)
    expected = torch.topk(queries @ keys.T, 10, dim=1).values
    torch.testing.assert_close(scores, expected)


def test_k_larger_than_the_number_of_keys_returns_all():
    queries, keys = _unit(3, 8, seed=5), _unit(4, 8, seed=6)
    scores, indices = score.topk(queries, keys, 10, chunk=3)
    assert scores.shape == indices.shape == (3, 4)
    assert torch.equal(indices, _full_topk(queries, keys, 4)[1])


def test_score_blocks_stay_bounded_for_many_queries(monkeypatch):
    from clipkit.score import retrieval

    for queries in (1, 16, 256, 1024, 5000, 100_000, 10_000_000):
        chunk = retrieval._default_chunk(queries)
        assert chunk >= 64
        assert queries * chunk <= 1 << 24 or chunk == 64, queries
    assert retrieval._default_chunk(1024) == 16384  # the tuned size for large batches
    # And the result does not depend on the block size the many queries lead to.
    monkeypatch.setattr(retrieval, "MAX_BLOCK_ELEMENTS", 300 * 90)
    queries, keys = _integers(300, 8, seed=27), _integers(1000, 8, seed=28)
    assert retrieval._default_chunk(300) == 90
    scores, indices = score.topk_stream(queries, [keys[:500], keys[500:]], 6)
    want_scores, want_indices = _full_topk(queries, keys, 6)
    assert torch.equal(indices, want_indices)
    assert torch.equal(scores.double(), want_scores)


def test_no_keys_gives_empty_results():
    scores, indices = score.topk(_unit(3, 8), torch.zeros(0, 8), 5)
    assert scores.shape == indices.shape == (3, 0)
    assert indices.dtype == torch.int64


def test_ties_go_to_the_lower_index_across_chunks():
    base = _unit(5, 8, seed=7)
    keys = torch.cat([base, base, base])  # every key appears three times: 0..4, 5..9, 10..14
    query = base[2:3]
    for chunk in (1, 2, 4, 5, 6, 100):
        _, indices = score.topk(query, keys, 3, chunk=chunk)
        assert indices.tolist() == [[2, 7, 12]], chunk
    # All-equal scores: the first k indices, in order.
    _, indices = score.topk(torch.ones(1, 4), torch.ones(50, 4), 6, chunk=7)
    assert indices.tolist() == [[0, 1, 2, 3, 4, 5]]


def test_later_blocks_merge_only_what_beats_the_kth_best_including_ties():
    # Past the first block, only scores above a row's k-th best are merged. In a later block,
    # an exact copy of the query's k-th key ties the cut and must stay out (the original has
    # the lower index), while a copy of its best key enters, right after the original.
    queries, base = _integers(6, 16, seed=20), _integers(64, 16, seed=21)
    best = _full_topk(queries[:1], base, 4)[1][0].tolist()
    filler = torch.zeros(100, 16)  # scores 0, below every query's 4th best
    keys = torch.cat([base, filler, base[[best[3], best[0]]]])
    scores, indices = score.topk(queries, keys, 4, chunk=64)
    want_scores, want_indices = _full_topk(queries, keys, 4)
    assert torch.equal(indices, want_indices)
    assert torch.equal(scores.double(), want_scores)
    assert indices[0].tolist() == [best[0], 165, best[1], best[2]]


def test_nan_scores_rank_first_in_every_block_as_in_a_full_sort():
    # A NaN key (say, from a broken encoder) must not be ranked differently depending on
    # which block it lands in: like torch.topk and a full sort, NaN comes first.
    queries, keys = _unit(3, 8, seed=23), _unit(200, 8, seed=24)
    keys[5] = float("nan")
    keys[150] = float("nan")
    _, indices = score.topk(queries, keys, 3, chunk=32)
    assert indices[:, :2].tolist() == [[5, 150]] * 3
    assert torch.equal(indices[:, 2], _full_topk(queries, keys, 3)[1][:, 2])


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_selection_split_over_threads_equals_the_full_matrix(monkeypatch, threads):
    from clipkit.score import retrieval

    monkeypatch.setattr(retrieval, "PARALLEL_SELECTION_ELEMENTS", 1)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        queries, keys = _integers(37, 12, seed=25), _integers(2000, 12, seed=26)
        scores, indices = score.topk(queries, keys, 9, chunk=250)
    finally:
        torch.set_num_threads(previous)
    want_scores, want_indices = _full_topk(queries, keys, 9)  # many exact ties at the cut
    assert torch.equal(indices, want_indices)
    assert torch.equal(scores.double(), want_scores)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_keys_of_any_float_dtype_are_scored_in_float32(dtype):
    queries, keys = _integers(4, 8, seed=29), _integers(100, 8, seed=30)  # exact in every dtype
    scores, indices = score.topk(queries, keys.to(dtype).requires_grad_(), 5, chunk=30)
    want_scores, want_indices = _full_topk(queries, keys, 5)
    assert torch.equal(indices, want_indices)
    assert scores.dtype == torch.float32 and torch.equal(scores.double(), want_scores)


def test_memory_mapped_float16_keys(tmp_path):
    keys = _unit(500, 16, seed=8).numpy().astype(np.float16)
    path = tmp_path / "keys.f16"
    mapped = np.memmap(path, dtype=np.float16, mode="w+", shape=keys.shape)
    mapped[:] = keys
    mapped.flush()
    readonly = np.memmap(path, dtype=np.float16, mode="r", shape=keys.shape)
    queries = _unit(6, 16, seed=9)
    scores, indices = score.topk(queries, readonly, 7, chunk=64)
    want_scores, want_indices = _full_topk(queries, torch.from_numpy(keys).float(), 7)
    assert torch.equal(indices, want_indices)
    torch.testing.assert_close(scores.double(), want_scores, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k", [0, -3])
def test_nonpositive_k_is_an_error(k):
    with pytest.raises(InputError, match="k must be at least 1"):
        score.topk(_unit(1, 4), _unit(3, 4), k)


def test_dimension_mismatch_is_an_error():
    with pytest.raises(InputError, match="do not share a dimension"):
        score.topk(_unit(1, 4), _unit(3, 5), 1)


def _brute_force_ranks(a, b):
    """Definition, in float64 over the full matrix: how many others beat the true partner."""
    sims = a.double() @ b.double().T
    diagonal = sims.diagonal()
    margin = RANK_TOLERANCE * a.double().norm(dim=1) * b.double().norm(dim=1)
    row = (sims > (diagonal + margin)[:, None]).sum(1)
    col = (sims > (diagonal + margin)[None, :]).sum(0)
    return row, col


@pytest.mark.parametrize(("size", "tile"), [(1, 4), (10, 3), (64, 64), (257, 50)])
def test_pair_ranks_equal_brute_force(size, tile):
    a, b = _unit(size, 12, seed=size), _unit(size, 12, seed=size + 1)
    ranks = score.pair_ranks(a, b, tile=tile)
    row, col = _brute_force_ranks(a, b)
    assert torch.equal(ranks.image_to_text, row)
    assert torch.equal(ranks.text_to_image, col)
    torch.testing.assert_close(ranks.scores, (a * b).sum(1))


def test_pair_ranks_hand_made_case():
    # Similarities s[i][k] = <a_i, b_k>, chosen by hand (a = identity, so s = b transposed):
    #            caption 0  caption 1  caption 2
    # image 0       0.5        0.9        0.6     -> captions 1 and 2 beat caption 0: rank 2
    # image 1       0.1        0.8        0.2     -> caption 1 is first: rank 0
    # image 2       0.0        0.7        0.1     -> caption 1 beats caption 2: rank 1
    # Columns: caption 0: images 1, 2 score 0.1, 0.0 < 0.5 -> rank 0;
    # caption 1: image 0 has 0.9 > 0.8 -> rank 1;
    # caption 2: image 0 has 0.6 > 0.1 and image 1 has 0.2 > 0.1 -> rank 2.
    sims = torch.tensor([[0.5, 0.9, 0.6], [0.1, 0.8, 0.2], [0.0, 0.7, 0.1]])
    ranks = score.pair_ranks(torch.eye(3), sims.T.contiguous())
    assert ranks.image_to_text.tolist() == [2, 0, 1]
    assert ranks.text_to_image.tolist() == [0, 1, 2]


def test_exact_duplicates_do_not_beat_the_partner():
    base = _unit(6, 8, seed=11)
    a = torch.cat([base, base])  # image i and i+6 are identical, and so are their captions
    ranks = score.pair_ranks(a, a.clone(), tile=5)
    assert ranks.image_to_text.tolist() == [0] * 12
    assert ranks.text_to_image.tolist() == [0] * 12


def test_pair_ranks_shape_mismatch():
    with pytest.raises(InputError, match="equal 2-D shapes"):
        score.pair_ranks(_unit(3, 4), _unit(4, 4))


def test_recall_and_rank_summary_hand_made():
    ranks = torch.tensor([0, 0, 1, 4, 9, 20])
    assert score.recall_at_k(ranks, (1, 5, 10)) == {1: 2 / 6, 5: 4 / 6, 10: 5 / 6}
    summary = score.rank_summary(ranks)
    assert summary["mean_rank"] == pytest.approx((1 + 1 + 2 + 5 + 10 + 21) / 6)
    assert summary["median_rank"] == 2.0  # torch's median is the lower middle value (2 and 5)


def test_recall_of_nothing_is_an_error():
    with pytest.raises(InputError):
        score.recall_at_k(torch.tensor([], dtype=torch.int64))


def test_similarity_is_the_inner_product():
    a, b = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    assert score.similarity(a, b).tolist() == [[11.0, 2.0]]


def test_topk_stream_over_blocks_equals_the_whole():
    queries, keys = _unit(5, 16, seed=12), _unit(250, 16, seed=13)
    keys[100] = keys[3]  # a tie across blocks goes to the lower index
    blocks = [keys[:40], keys[40:41], keys[41:41], keys[41:200].numpy(), keys[200:]]
    scores, indices = score.topk_stream(queries, blocks, 12)
    want_scores, want_indices = _full_topk(queries, keys, 12)
    assert torch.equal(indices, want_indices)
    torch.testing.assert_close(scores.double(), want_scores, rtol=1e-5, atol=1e-6)
    empty_scores, empty_indices = score.topk_stream(queries, [], 3)
    assert empty_scores.shape == empty_indices.shape == (5, 0)


def test_group_lines_lays_ragged_lines_out_in_padded_rows():
    from clipkit.score.groups import group_lines

    groups = group_lines(np.array([2, 2, 5, 7, 7, 7]))
    assert groups.lines.tolist() == [2, 5, 7] and groups.width == 3
    assert groups.row.tolist() == [0, 0, 1, 2, 2, 2]
    assert groups.slot.tolist() == [0, 1, 0, 0, 1, 2]
