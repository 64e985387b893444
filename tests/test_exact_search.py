"""The torch-free exact top-k (``clipkit.index.exact``) against its definition and against the
scoring core's ``score.topk_stream``, and the index row map that a search reads hits from."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipkit import score, store
from clipkit.errors import InputError
from clipkit.index.exact import CHUNK, exact_topk, exact_topk_stream


def _unit(rows: int, dim: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _definition(queries: np.ndarray, keys: np.ndarray, k: int):
    """Score every key in float64, order by (score descending, row ascending), keep k."""
    scores = queries.astype(np.float64) @ keys.astype(np.float64).T
    rows = [
        sorted(range(len(keys)), key=lambda r, q=q: (-scores[q, r], r))[:k]
        for q in range(len(queries))
    ]
    return np.take_along_axis(scores, np.asarray(rows), 1), np.asarray(rows)


def test_exact_topk_breaks_a_tie_across_the_cut_to_the_lower_rows():
    # 3,000 equal keys: argpartition alone picks any 5 of them; the answer is rows 0..4.
    keys = np.tile(np.array([[1.0, 0.0]], np.float32), (3000, 1))
    keys[1500] = [0.0, 1.0]
    scores, rows = exact_topk(np.array([[1.0, 0.0], [0.0, 1.0]], np.float32), keys, 5)
    assert rows.tolist() == [[0, 1, 2, 3, 4], [1500, 0, 1, 2, 3]]
    np.testing.assert_allclose(scores, [[1] * 5, [1, 0, 0, 0, 0]])


@pytest.mark.parametrize("count", [1, 7, 40])  # each way of computing the scores
def test_exact_topk_equals_its_definition(count):
    queries, keys = _unit(count, 24, seed=1), _unit(500, 24, seed=2)
    keys[400] = keys[17]  # a tie inside the top-k goes to the lower row
    scores, rows = exact_topk(queries, keys, 20)
    want_scores, want_rows = _definition(queries, keys, 20)
    assert rows.tolist() == want_rows.tolist()
    np.testing.assert_allclose(scores, want_scores, atol=1e-6)


def test_the_stream_over_blocks_equals_the_scoring_core_s():
    queries, keys = _unit(5, 16, seed=12), _unit(250, 16, seed=13)
    keys[100] = keys[3]  # a tie across blocks goes to the lower index
    blocks = [keys[:40], keys[40:41], keys[41:41], keys[41:200], keys[200:]]
    scores, rows = exact_topk_stream(queries, blocks, 12)
    want_scores, want_rows = score.topk_stream(torch.from_numpy(queries), blocks, 12)
    assert rows.tolist() == want_rows.tolist()
    np.testing.assert_allclose(scores, want_scores.numpy(), atol=1e-6)
    empty_scores, empty_rows = exact_topk_stream(queries, [], 3)
    assert empty_scores.shape == empty_rows.shape == (5, 0)


def test_the_stream_cuts_a_large_block_into_chunks_and_keeps_k_below_the_rows():
    queries, keys = _unit(2, 8, seed=3), _unit(CHUNK + 50, 8, seed=4)
    scores, rows = exact_topk_stream(queries, [keys], 7)
    want_scores, want_rows = _definition(queries, keys, 7)
    assert rows.tolist() == want_rows.tolist()
    few_scores, few_rows = exact_topk_stream(queries, [keys[:3]], 10)
    assert few_rows.shape == (2, 3) and sorted(few_rows[0].tolist()) == [0, 1, 2]


def test_the_row_map_reads_the_rows_asked_for_from_their_groups(tmp_path, monkeypatch):
    monkeypatch.setattr("clipkit.store.tables.ROW_MAP_GROUP", 100)
    count = 1000
    rows = {
        "id": [f"{n:08x}" for n in range(count)],
        "uri": [f"/img/{n}.jpg" for n in range(count)],
        "kind": ["image"] * count,
        "text": [None if n % 2 else f"caption {n}" for n in range(count)],
    }
    store.write_row_map(tmp_path / "rows.parquet", rows)
    opened = store.read_row_map(tmp_path / "rows.parquet")
    assert len(opened) == count and opened.names == ["id", "uri", "kind", "text"]
    wanted = [999, 0, 450, 451, 100, 99]
    taken = opened.take(wanted)
    assert taken == {name: [values[n] for n in wanted] for name, values in rows.items()}
    assert len(opened._groups) == 4  # groups 9, 0, 4 and 1 of ten: only those were read
    assert opened.take([]) == {name: [] for name in rows}
    assert opened.to_lists() == rows and opened.column("uri") == rows["uri"]


@pytest.mark.parametrize("damage", ["missing", "not parquet"])
def test_an_unreadable_row_map_is_named_with_its_remedy(tmp_path, damage):
    path = tmp_path / "rows.parquet"
    if damage == "not parquet":
        path.write_bytes(b"PAR1 this is not a parquet file")
    with pytest.raises(InputError) as caught:
        store.read_row_map(path)
    assert "row map" in str(caught.value.message) and "clipkit index" in caught.value.hint


@pytest.mark.parametrize("parts", [2, 3, 7])
def test_exact_topk_in_parallel_parts_equals_its_definition(monkeypatch, parts):
    from clipkit.index import exact

    monkeypatch.setattr(exact, "MIN_PART_ROWS", 10)  # split even this small set
    queries, keys = _unit(5, 16, seed=3), _unit(300, 16, seed=4)
    keys[250] = keys[10]  # a tie across parts goes to the lower row
    keys[299] = keys[0]
    queries[0] = keys[10]
    scores, rows = exact.exact_topk_parallel(queries, keys, 12, parts)
    want_scores, want_rows = _definition(queries, keys, 12)
    assert rows.tolist() == want_rows.tolist()
    assert rows[0, :2].tolist() == [10, 250]
    np.testing.assert_allclose(scores, want_scores, atol=1e-6)
    few_scores, few_rows = exact.exact_topk_parallel(queries, keys[:40], 12, parts)
    assert few_rows.tolist() == _definition(queries, keys[:40], 12)[1].tolist()
