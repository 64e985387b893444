"""Decode worker processes without torch: what the ONNX runtime uses in place of DataLoader.

``ordered_batches`` hands batches of item numbers to ``workers`` forked processes and yields
their results in order, with at most ``ahead`` batches in flight, so a slow model never has a
whole folder's pixels waiting in memory. The dataset reaches the workers by inheritance, not by
pickling (its packed paths stay shared pages, as with DataLoader), and the workers start as
DataLoader's do (:func:`clipkit.inputs.pipeline.decode_worker_init`: the lowest CPU priority,
SIGTERM ignored) and ignore Ctrl-C, which the main process handles.

A ``ProcessPoolExecutor``, not a ``multiprocessing.Pool``: a worker that dies (killed, out of
memory) fails its batch with ``BrokenProcessPool`` instead of leaving the caller waiting for
ever.
"""

from __future__ import annotations

import collections
import gc
import multiprocessing
import signal
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

# The dataset and batch maker of this worker process, set once when it starts.
_job: tuple[Any, Callable[[list[Any]], Any]] | None = None


def ordered_batches(
    dataset: Any,
    collate: Callable[[list[Any]], Any],
    batches: Sequence[range],
    *,
    workers: int,
    ahead: int,
    worker_init: Callable[[int], None] | None = None,
) -> Iterator[Any]:
    """``collate([dataset[i] for i in batch])`` for each batch, in order.

    Args:
        dataset: anything indexable by item number (read in the workers).
        collate: turns a batch's samples into what the caller receives.
        batches: the item numbers of each batch.
        workers: processes; 0 makes each batch in this process.
        ahead: batches in flight at most (bounded memory), at least one per worker.
        worker_init: run once in each worker as it starts, with its number.
    """
    if workers == 0:
        for batch in batches:
            yield collate([dataset[i] for i in batch])
        return
    # Fork where there is fork: workers inherit the dataset's pages instead of a pickled copy.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    numbers = context.Queue()
    for number in range(workers):
        numbers.put(number)
    executor = ProcessPoolExecutor(
        workers, context, initializer=_start, initargs=(dataset, collate, worker_init, numbers)
    )
    pending: collections.deque[Future] = collections.deque()
    try:
        for n, batch in enumerate(batches):
            # The executor forks a worker per submission until it has them all; frozen, the
            # parent's objects keep their pages shared (see pipeline.start_workers).
            forks = n < workers
            if forks:
                gc.freeze()
            try:
                pending.append(executor.submit(_make, list(batch)))
            finally:
                if forks:
                    gc.unfreeze()
            if len(pending) >= max(ahead, workers):
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        # On an early stop the queued batches are dropped; a worker stuck in a read is killed
        # when the command ends (cli.main ends stuck workers).
        executor.shutdown(wait=not pending, cancel_futures=True)


def _start(
    dataset: Any,
    collate: Callable[[list[Any]], Any],
    worker_init: Callable[[int], None] | None,
    numbers: Any,
) -> None:
    global _job
    _job = dataset, collate
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the main process, which ends us
    if worker_init is not None:
        worker_init(numbers.get())


def _make(batch: list[int]) -> Any:
    assert _job is not None, "a worker runs only after _start"
    dataset, collate = _job
    return collate([dataset[i] for i in batch])
