"""Dynamic batching in ``clipkit serve``: concurrent callers share model calls and each gets
exactly its own rows; a failure reaches every caller of its batch and the next batch works."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from clipkit.serve.batching import Batcher


def _fake(items: list[str]) -> np.ndarray:
    """(B, 2): each item's length and the sum of its code points."""
    return np.array([[len(t), sum(map(ord, t))] for t in items], dtype=np.float64)


def test_concurrent_callers_share_model_calls_and_get_their_own_rows():
    calls = []

    def encode(items):
        calls.append(list(items))
        return _fake(items)

    batcher = Batcher(encode, window_s=0.05)
    start = threading.Barrier(8)
    results: dict[int, np.ndarray] = {}

    def caller(i: int) -> None:
        start.wait()
        results[i] = np.stack(batcher([f"query {i}", "x" * i]))

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) < 8  # 16 texts from 8 callers, far fewer model calls
    assert sorted(t for call in calls for t in call) == sorted(
        t for i in range(8) for t in (f"query {i}", "x" * i)
    )
    for i in range(8):
        assert results[i] == pytest.approx(_fake([f"query {i}", "x" * i]))


def test_one_caller_pays_one_call_and_large_batches_are_split():
    calls = []
    batcher = Batcher(lambda items: calls.append(len(items)) or _fake(items), max_batch=4)
    assert np.stack(batcher(["a", "bb"])) == pytest.approx(_fake(["a", "bb"]))
    assert calls == [2]
    items = [str(i) * (i + 1) for i in range(10)]
    assert np.stack(batcher(items)) == pytest.approx(_fake(items))
    assert calls == [2, 4, 4, 2]


def test_a_failure_reaches_its_callers_and_the_next_batch_works():
    broken = [True]

    def encode(items):
        if broken[0]:
            raise RuntimeError("the model fell over")
        return _fake(items)

    batcher = Batcher(encode)
    with pytest.raises(RuntimeError, match="fell over"):
        batcher(["a"])
    broken[0] = False
    assert np.stack(batcher(["abc"])) == pytest.approx(_fake(["abc"]))


def test_the_leader_waits_for_company_only_while_others_are_busy(monkeypatch):
    from clipkit.serve import batching

    sleeps: list[float] = []
    monkeypatch.setattr(batching.time, "sleep", sleeps.append)
    busy = [False]
    batcher = Batcher(_fake, window_s=0.25, others_busy=lambda: busy[0])
    assert np.stack(batcher(["a"])) == pytest.approx(_fake(["a"]))
    assert sleeps == []  # a lone request runs at once
    busy[0] = True
    assert np.stack(batcher(["b"])) == pytest.approx(_fake(["b"]))
    assert sleeps == [0.25]
