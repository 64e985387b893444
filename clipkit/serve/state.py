"""What a running server holds: each index loaded once, each model once, thumbnails made once.

No web framework here: ``app`` turns requests into these calls and their errors into answers.
An index whose ``index.json`` changes on disk (``clipkit index --update`` publishes the three
files together) is loaded again before the next request that uses it; if that load fails,
the last good one keeps serving and the failure is kept for ``/api/indexes``.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clipkit.errors import ClipkitError, InputError
from clipkit.index.load import LoadedIndex, load_index
from clipkit.index.parts import PARTS
from clipkit.inputs.decode import DecodeError, decode_cost, finish_decode, open_image
from clipkit.inputs.filenames import locate, os_path
from clipkit.inputs.files import read_bytes
from clipkit.models.runtime import RuntimeChoice, load_matching_encoder
from clipkit.score.arrays import as_numpy
from clipkit.search.run import QueryResult, check_weights, combine, index_hits
from clipkit.serve.batching import Batcher
from clipkit.serve.config import ServeConfig, named_indexes
from clipkit.serve.limits import DECODES_AT_ONCE, THUMBNAIL_SIDE
from clipkit.serve.uploads import Decoder

THUMBNAILS_KEPT = 4096  # about 10 KB each
# The requests of one encoding batch reach the search together: a short window catches them.
SEARCH_WINDOW_S = 0.001
# An exact index's rows are scored by this many threads at once: the math libraries run one
# thread each in the server (see cli/serve_cmd.py), and a lone query would use one core.
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

# One query of a search batch: the index as loaded, a (D,) unit vector, k, scoring threads.
SearchItem = tuple[LoadedIndex, np.ndarray, int, int]
# Its answer: (k',) scores and (k',) row numbers (-1: none), as LoadedIndex.search gives.
SearchAnswer = tuple[np.ndarray, np.ndarray]
Stamp = tuple[tuple[int, int], ...]  # (mtime_ns, size) of each file of an index folder


class NotFound(ClipkitError):
    """A name or id that the served indexes do not hold (answered 404)."""


@dataclass
class ServedIndex:
    """One index as loaded, with what it was loaded from."""

    name: str
    folder: Path
    loaded: LoadedIndex
    stamp: Stamp  # of the folder's files when loaded (or when a reload last failed)
    problem: str = ""  # why the latest reload failed (the previous load still serves)
    _row_of: dict[str, int] | None = field(default=None, repr=False)

    def row_of(self, item_id: str) -> int:
        """The index row that holds content ``item_id``.

        Raises:
            NotFound: no row holds it.
        """
        if self._row_of is None:
            self._row_of = {i: n for n, i in enumerate(self.loaded.rows.column("id"))}
        row = self._row_of.get(item_id)
        if row is None:
            raise NotFound(f"No row {item_id!r} in index {self.name!r}.", "")
        return row


class Served:
    """The indexes of a ``ServeConfig`` and their models, safe to call from many threads."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._encoders: dict[str, tuple[Any, RuntimeChoice]] = {}
        self._text_batchers: dict[str, Batcher[str, np.ndarray]] = {}  # by fingerprint
        self._in_progress = 0  # search and embed calls now running (batchers wait if > 1)
        self._counting = threading.Lock()  # not _lock: a reload holds that for seconds
        # threads scoring an exact index: the cores, shared among the worker processes
        self._search_threads = max(1, CORES // config.processes)
        self._search_batcher = Batcher[SearchItem, SearchAnswer](
            _search_batch, SEARCH_WINDOW_S, others_busy=self._others_busy
        )
        self._thumbnails: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._decoder = Decoder(DECODES_AT_ONCE)
        self._indexes = {
            name: self._load(name, folder) for name, folder in named_indexes(config).items()
        }
        for served in self._indexes.values():  # every model loaded before the first request
            self.encoder(served)

    @property
    def names(self) -> list[str]:
        return list(self._indexes)

    def index(self, name: str) -> ServedIndex:
        """The index called ``name``, loaded again first if it changed on disk.

        Raises:
            NotFound: no such index.
        """
        served = self._indexes.get(name)
        if served is None:
            raise NotFound(f"No index named {name!r}.", f"Served: {', '.join(self.names)}.")
        if _stamp(served.folder) != served.stamp:
            with self._lock:
                served = self._indexes[name]
                if _stamp(served.folder) != served.stamp:
                    served = self._reload(served)
        return served

    def encoder(self, served: ServedIndex) -> tuple[Any, RuntimeChoice]:
        """The model that made ``served`` (or ``--model``), loaded once per fingerprint."""
        info = served.loaded.info
        cached = self._encoders.get(info.fingerprint)
        if cached is None:
            cached = load_matching_encoder(
                info.model,
                info.fingerprint,
                spec=self.config.given_spec,
                device=self.config.device,
                runtime=self.config.runtime,
            )
            encoder = cached[0]
            self._text_batchers[info.fingerprint] = Batcher(
                lambda texts: list(as_numpy(encoder.encode_texts(texts)).astype(np.float32)),
                others_busy=self._others_busy,
            )
            self._encoders[info.fingerprint] = cached
        return cached

    def search(
        self,
        name: str,
        *,
        texts: Sequence[str] = (),
        images: Sequence[bytes] = (),
        rows: Sequence[str] = (),
        weights: Sequence[float] | None = None,
        k: int = 10,
    ) -> QueryResult:
        """One weighted query (texts, image files' bytes, ids of indexed rows) against one
        index; weights in that order, 1 each by default.

        Raises:
            InputError: no query part, weights that do not fit, an unreadable image.
            NotFound: the index or a row id.
        """
        with self._working():
            return self._search_one(name, texts, images, rows, weights, k)

    def _search_one(
        self,
        name: str,
        texts: Sequence[str],
        images: Sequence[bytes],
        rows: Sequence[str],
        weights: Sequence[float] | None,
        k: int,
    ) -> QueryResult:
        served = self.index(name)
        parts = self._embed(served, texts, images)
        if rows:
            numbers = [served.row_of(item_id) for item_id in rows]
            parts.append(served.loaded.vectors_at(numbers))
        if not parts:
            raise InputError("No query given.", "Pass q (text), images or rows.")
        vectors = np.concatenate(parts)
        named = [*texts, *(f"image {i + 1}" for i in range(len(images))), *rows]
        weights = check_weights(
            list(weights) if weights else [1.0] * len(vectors),
            named,
            "One weight per part: texts, then images, then rows.",
        )
        label = " + ".join(named)
        loaded = served.loaded
        query = combine(vectors, weights)[0]
        ((scores, found),) = self._search_batcher([(loaded, query, k, self._search_threads)])
        return index_hits(loaded, scores[None], found[None], [label])[0]

    def embed(
        self, served: ServedIndex, texts: Sequence[str], images: Sequence[bytes]
    ) -> list[np.ndarray]:
        """(n, D) unit embeddings of the texts, then (m, D) of the images, by ``served``'s
        model (empty parts left out)."""
        with self._working():
            return self._embed(served, texts, images)

    def _embed(
        self, served: ServedIndex, texts: Sequence[str], images: Sequence[bytes]
    ) -> list[np.ndarray]:
        encoder, _ = self.encoder(served)
        parts = []
        if texts:  # batched with other requests' texts (dynamic batching)
            batcher = self._text_batchers[served.loaded.info.fingerprint]
            parts.append(np.stack(batcher(list(texts))))
        if images:
            prepared = self._decoder.uploads(
                images,
                encoder.prepare_image,
                min_side=min(encoder.image_size),
                max_pixels=self.config.max_pixels,
                max_decode=self.config.max_decode,
            )
            if isinstance(prepared[0], np.ndarray):
                pixels: Any = np.stack(prepared)
            else:
                import torch

                pixels = torch.stack(prepared)
            parts.append(as_numpy(encoder.encode_images(pixels)).astype(np.float32))
        return parts

    def thumbnail(self, name: str, item_id: str) -> bytes:
        """A small JPEG of an indexed image, made once and kept (the most recent few thousand).

        The file is the one the index row names; it must lie inside the folder the index's
        uris are relative to, after symbolic links are followed.

        Raises:
            NotFound: no such index or row, not an image, a file outside that folder, or one
                that cannot be read.
        """
        key = (name, item_id)
        with self._lock:
            if key in self._thumbnails:
                self._thumbnails.move_to_end(key)
                return self._thumbnails[key]
        served = self.index(name)
        row = served.loaded.rows.take([served.row_of(item_id)])
        if row["kind"][0] != "image":
            raise NotFound(f"Row {item_id!r} is not an image.", "")
        path = _inside(row["uri"][0], served.loaded.info.base)
        try:
            opened = open_image(
                read_bytes(path), min_side=THUMBNAIL_SIDE, max_pixels=self.config.max_pixels
            )
            if decode_cost(opened) > self.config.max_decode:
                raise DecodeError("decode", "too large to preview")
            image = self._decoder.run(functools.partial(_thumbnail, opened))
        except DecodeError as error:
            raise NotFound(
                f"The image of row {item_id!r} is unreadable: {error.reason}.", ""
            ) from None
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=85)
        data = buffer.getvalue()
        with self._lock:
            self._thumbnails[key] = data
            while len(self._thumbnails) > THUMBNAILS_KEPT:
                self._thumbnails.popitem(last=False)
        return data

    def describe(self) -> list[dict[str, Any]]:
        """Name, model, rows, kind, recall measured at build, and any reload problem."""
        described = []
        for name in self.names:
            served = self.index(name)
            info = served.loaded.info
            described.append(
                {
                    "name": name,
                    "model": info.model,
                    "fingerprint": info.fingerprint,
                    "rows": info.rows,
                    "kind": info.kind,
                    "factory": info.factory,
                    "recall_at_10": info.recall_at_10,
                    "runtime": self.encoder(served)[1].runtime,
                    "problem": served.problem,
                }
            )
        return described

    @contextlib.contextmanager
    def _working(self) -> Iterator[None]:
        """Counts a search or embed call as in progress while it runs."""
        with self._counting:
            self._in_progress += 1
        try:
            yield
        finally:
            with self._counting:
                self._in_progress -= 1

    def _others_busy(self) -> bool:
        """Whether a call other than the asking one is in progress (it may bring work to
        batch): a lone request is not kept waiting for company."""
        return self._in_progress > 1

    def _load(self, name: str, folder: Path) -> ServedIndex:
        stamp = _stamp(folder)
        loaded = load_index(folder, check_source=False, check_rows=True)
        return ServedIndex(name, folder, loaded, stamp)

    def _reload(self, served: ServedIndex) -> ServedIndex:
        """The index loaded again; if that fails, the last good load, which keeps serving
        (its files stay open: a replaced file is still read as it was) with the reason."""
        stamp = _stamp(served.folder)
        try:
            fresh = self._load(served.name, served.folder)
            self.encoder(fresh)  # a new model (a rebuilt index) is loaded before it serves
        except Exception as error:  # noqa: BLE001 - whatever it is, the last good load serves
            served.problem = (
                error.message
                if isinstance(error, ClipkitError)
                else f"it could not be loaded ({type(error).__name__}: {error})"
            )
            served.stamp = stamp  # tried again when a file changes, not on every request
            return served
        self._indexes[served.name] = fresh
        with_name = [key for key in self._thumbnails if key[0] == served.name]
        for key in with_name:  # the rows may name other files now
            del self._thumbnails[key]
        return fresh


def _thumbnail(opened: Any) -> Any:
    """An opened image decoded and shrunk to a thumbnail (on a decode thread, like uploads)."""
    image = finish_decode(opened)
    image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    return image


def _search_batch(items: list[SearchItem]) -> list[SearchAnswer]:
    """Each query's top-k, one ``search`` call for each index and k among the queries: the
    index's vectors are read once for the group rather than once for each query."""
    answers: list[SearchAnswer | None] = [None] * len(items)
    groups: dict[tuple[int, int], list[int]] = {}
    for n, (loaded, _, k, _) in enumerate(items):
        groups.setdefault((id(loaded), k), []).append(n)
    for members in groups.values():
        loaded, _, k, threads = items[members[0]]
        scores, found = loaded.search(np.stack([items[n][1] for n in members]), k, threads)
        for n, row_scores, row_found in zip(members, scores, found, strict=True):
            answers[n] = (row_scores, row_found)
    return answers  # type: ignore[return-value]  # every position was filled


def _stamp(folder: Path) -> Stamp:
    """(mtime_ns, size) of each of the index's files: any of them replaced (or damaged in
    place) is a change to load. All three, not the sidecar alone: a set replaced file by file
    is whole only after its last file, and a load that failed on the first ones is tried
    again then."""
    stamp = []
    for name in PARTS:
        try:
            info = (folder / name).stat()
            stamp.append((info.st_mtime_ns, info.st_size))
        except OSError:
            stamp.append((0, 0))
    return tuple(stamp)


def _inside(uri: str, recorded_base: str | None) -> str:
    """The real path of an index row's image, if it lies inside the index's base folder.

    The recorded base itself, not ``reading_base``'s view of it: that is None when the base is
    the working folder (uris then open from here as they are), which is where `embed`,
    `index` and `serve` most often all run; the server still serves that folder and no other.
    """
    if recorded_base is None or not os.path.isdir(os_path(recorded_base)):
        raise NotFound("This index records no image folder.", "")
    path = os.path.realpath(os_path(locate(uri, recorded_base)))
    root = os.path.realpath(os_path(recorded_base))
    if os.path.commonpath([path, root]) != root or not os.path.isfile(path):
        raise NotFound("No such image.", "")
    return path
