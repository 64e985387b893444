"""Dynamic batching: concurrent requests' work done in one call.

Request handlers run in a thread pool. The first thread to arrive with work becomes the
leader: it waits a short window for others to add theirs, takes everything queued, runs it as
one batch and hands each caller its results; threads that arrive meanwhile wait for theirs,
and the first to arrive after the leader took the queue leads the next batch. The leader
waits only while ``others_busy()`` says other requests are in progress (they may bring
work): a lone request does not pay the window, and many pay one call between them.
``clipkit serve`` batches the text encoding (one model call) and the index search (one
product of the index's vectors with all the queries: see ``clipkit.index.exact``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

WINDOW_S = 0.002  # a tiny model encodes a text in about 1 ms on two cores
MAX_BATCH = 64


class Batcher(Generic[Item, Result]):
    """Runs lists of items through ``run`` ((B,) items -> (B,) results, in order), batching
    concurrent calls. Thread-safe; an error in ``run`` reaches every caller of that batch."""

    def __init__(
        self,
        run: Callable[[list[Item]], Sequence[Result]],
        window_s: float = WINDOW_S,
        max_batch: int = MAX_BATCH,
        others_busy: Callable[[], bool] = lambda: True,
    ) -> None:
        self._run_batch = run
        self._others_busy = others_busy
        self._window_s = window_s
        self._max_batch = max_batch
        self._lock = threading.Lock()
        self._queued: list[tuple[Item, Future[Result]]] = []
        self._leading = False

    def __call__(self, items: Sequence[Item]) -> list[Result]:
        """The results of ``items``, in order."""
        futures: list[Future[Result]] = [Future() for _ in items]
        with self._lock:
            self._queued.extend(zip(items, futures, strict=True))
            lead = not self._leading
            self._leading = True
        if lead:
            try:
                if self._others_busy():
                    time.sleep(self._window_s)
            finally:  # whatever happens, the queue is taken and the next caller may lead
                with self._lock:
                    batch, self._queued = self._queued, []
                    self._leading = False
            self._run(batch)
        return [future.result() for future in futures]

    def _run(self, batch: list[tuple[Item, Future[Result]]]) -> None:
        for start in range(0, len(batch), self._max_batch):
            part = batch[start : start + self._max_batch]
            try:
                results = self._run_batch([item for item, _ in part])
            except BaseException as error:  # every waiting caller hears of it
                for _, future in part:
                    future.set_exception(error)
                continue
            for (_, future), result in zip(part, results, strict=True):
                future.set_result(result)
