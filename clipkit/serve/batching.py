"""Dynamic batching: concurrent requests' texts encoded in one model call.

Request handlers run in a thread pool. The first thread to arrive with work becomes the
leader: it waits a short window for others to add theirs, takes everything queued, encodes it
as one batch and hands each caller its rows; threads that arrive meanwhile wait for their
rows, and the first to arrive after the leader took the queue leads the next batch. A single
request pays the window once; many pay one model call between them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future

import numpy as np

WINDOW_S = 0.002  # a tiny model encodes a text in about 1 ms on two cores
MAX_BATCH = 64


class Batcher:
    """Encodes lists of items through ``encode`` ((B,) items -> (B, D) array), batching
    concurrent calls. Thread-safe; an encoding error reaches every caller of that batch."""

    def __init__(
        self,
        encode: Callable[[list[str]], np.ndarray],
        window_s: float = WINDOW_S,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._encode = encode
        self._window_s = window_s
        self._max_batch = max_batch
        self._lock = threading.Lock()
        self._queued: list[tuple[str, Future[np.ndarray]]] = []
        self._leading = False

    def __call__(self, items: Sequence[str]) -> np.ndarray:
        """(len(items), D) the encodings of ``items``, in order."""
        futures: list[Future[np.ndarray]] = [Future() for _ in items]
        with self._lock:
            self._queued.extend(zip(items, futures, strict=True))
            lead = not self._leading
            self._leading = True
        if lead:
            try:
                time.sleep(self._window_s)
            finally:  # whatever happens, the queue is taken and the next caller may lead
                with self._lock:
                    batch, self._queued = self._queued, []
                    self._leading = False
            self._run(batch)
        return np.stack([future.result() for future in futures])

    def _run(self, batch: list[tuple[str, Future[np.ndarray]]]) -> None:
        for start in range(0, len(batch), self._max_batch):
            part = batch[start : start + self._max_batch]
            try:
                vectors = self._encode([item for item, _ in part])
            except BaseException as error:  # every waiting caller hears of it
                for _, future in part:
                    future.set_exception(error)
                continue
            for (_, future), vector in zip(part, vectors, strict=True):
                future.set_result(vector)
