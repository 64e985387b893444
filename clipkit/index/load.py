"""Opening and searching an index folder: the sidecar, the FAISS index, the row map.

No torch here: ``clipkit search`` on the ONNX runtime loads an index without it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clipkit import __version__, store
from clipkit.errors import InputError
from clipkit.index.exact import exact_topk_parallel
from clipkit.index.parts import (
    INDEX_FILE,
    META_FILE,
    ROWS_FILE,
    handle_record,
    read_vectors,
    repair,
)
from clipkit.infra.locks import HalfPublished, reading_published

if TYPE_CHECKING:
    import faiss  # imported where it is used: a missing index is reported without it

__all__ = [
    "INDEX_FILE",
    "META_FILE",
    "ROWS_FILE",
    "IndexInfo",
    "LoadedIndex",
    "load_index",
    "read_info",
]


@dataclass(frozen=True)
class IndexInfo:
    """The sidecar ``index.json``: what an index is, where it came from and how good it is."""

    model: str
    fingerprint: str
    dim: int
    kind: str
    factory: str
    params: dict[str, int]
    rows: int
    source: str
    shards: list[dict[str, Any]]
    build_seconds: float
    recall_at_10: dict[str, float | None]
    target_recall: float
    metric: str = "inner_product"
    clipkit_version: str = __version__
    removed_rows: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    base: str | None = None  # the folder the rows' relative uris are relative to (the source's)
    # index.faiss and rows.parquet: {"bytes": …, "crc32": …} each (see index.parts); empty in
    # an index made before clipkit recorded them, which is read unchecked.
    files: dict[str, dict[str, int]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


SMALL_BATCH = 256
SCORE_SLACK = 1e-3  # float32 rounding of a dot product of unit vectors
QUANTIZED_SCORE_SLACK = 0.1  # PQ and SQ reconstruct vectors within a few percent of norm 1


@dataclass
class LoadedIndex:
    """An index ready to search: FAISS index (search parameters applied), row map, sidecar."""

    index: faiss.Index
    rows: store.RowMap
    info: IndexInfo
    folder: Path

    def __post_init__(self) -> None:
        import faiss

        # A zero-copy view of an exact index's vectors; valid while self.index lives.
        concrete = faiss.downcast_index(self.index)
        self.vectors = None
        if isinstance(concrete, faiss.IndexFlat) and concrete.ntotal:
            flat = faiss.rev_swig_ptr(concrete.get_xb(), concrete.ntotal * concrete.d)
            self.vectors = flat.reshape(concrete.ntotal, concrete.d)
        self._direct_map = threading.Lock()  # vectors_at may be called from many threads
        self._direct_map_made = False

    def search(self, queries: np.ndarray, k: int, parts: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(Q, D) unit queries -> scores and row numbers (Q, min(k, rows)), best first.

        ``parts``: threads that score an exact index's rows at once (for callers whose math
        libraries run single-threaded, ``clipkit serve``); other indexes use FAISS's own.
        """
        if k < 1:
            raise InputError(f"k must be at least 1, got {k}.", "Ask for one or more results.")
        k = min(k, self.index.ntotal)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.vectors is not None and len(queries) < SMALL_BATCH:
            scores, rows = exact_topk_parallel(queries, self.vectors, k, parts)
        else:
            scores, rows = self.index.search(queries, k)
        self._check_scores(scores, rows)
        return scores, rows

    def vectors_at(self, rows: Sequence[int]) -> np.ndarray:
        """(R, D) float32 the stored vectors of index rows (a quantized index gives back its
        approximation), for queries by example ("more like this")."""
        if self.vectors is not None:
            return np.ascontiguousarray(self.vectors[list(rows)], dtype=np.float32)
        import faiss

        with self._direct_map:  # made once; rebuilding it under another reader would crash
            if not self._direct_map_made:
                try:
                    ivf = faiss.extract_index_ivf(self.index)
                    ivf.make_direct_map()  # IVF lists hold no row -> list map until asked
                except RuntimeError:
                    pass  # not an IVF index: HNSW and flat ones reconstruct as they are
                self._direct_map_made = True
        return np.stack([self.index.reconstruct(int(row)) for row in rows]).astype(np.float32)

    def _check_scores(self, scores: np.ndarray, rows: np.ndarray) -> None:
        """Unit vectors score in [-1, 1]: outside it (beyond rounding, or a quantizer's
        error), the index's vectors are damaged, and its answers would be wrong."""
        quantized = any(code in self.info.factory for code in ("PQ", "SQ"))
        slack = QUANTIZED_SCORE_SLACK if quantized else SCORE_SLACK
        found = np.abs(scores[rows >= 0])  # FAISS marks a missing result with row -1
        if self.info.metric == "inner_product" and found.max(initial=0.0) > 1 + slack:
            raise InputError(
                f"The index in {self.folder} gave a score of {found.max():.4g}, "
                "which unit vectors cannot have: its vectors are damaged.",
                _REBUILD,
            )


def load_index(folder: Path, *, check_source: bool = True, check_rows: bool = False) -> LoadedIndex:
    """Open an index folder, checking that its parts agree and (optionally) its source.

    ``check_rows``: read the whole row map once to check its recorded CRC-32 (a server, which
    loads once and then answers for long); otherwise only the pages a search reads are
    checked, as it reads them.

    Raises:
        InputError: a missing or corrupt part, an empty index, or a changed source folder.
    """
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise InputError(
            f"{folder} is not a clipkit index (no {META_FILE}).",
            "Build one with: clipkit index EMB_DIR -o INDEX_DIR",
        )
    try:
        with reading_published(folder, "The index", _REBUILD):  # not mid-way through an update
            info, index, rows = _read_parts(folder, check_rows)
    except HalfPublished:
        # Its writer stopped between renames: whole again if the checksums say which set
        # is there (or the staged files complete the new one); else still refused.
        if not repair(folder):
            raise
        with reading_published(folder, "The index", _REBUILD):
            info, index, rows = _read_parts(folder, check_rows)
    if index.ntotal != len(rows) or index.ntotal != info.rows:
        raise InputError(
            f"The parts of {folder} disagree: {index.ntotal} vectors, {len(rows)} "
            f"mapped rows, {info.rows} recorded.",
            _REBUILD,
        )
    if index.ntotal == 0:
        raise InputError(f"The index in {folder} is empty.", _REBUILD)
    if check_source:
        _check_source(info)
    import faiss

    for knob, value in info.params.items():
        faiss.ParameterSpace().set_index_parameter(index, knob, value)
    return LoadedIndex(index=index, rows=rows, info=info, folder=folder)


def read_info(folder: Path) -> IndexInfo | None:
    """The sidecar of an index folder without opening the index (None: no readable sidecar),
    for a caller that only asks whether an index is there and what it was built from."""
    try:
        return IndexInfo(**json.loads((folder / META_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _read_parts(folder: Path, check_rows: bool) -> tuple[IndexInfo, faiss.Index, store.RowMap]:
    meta_path = folder / META_FILE
    try:
        info = IndexInfo(**json.loads(meta_path.read_text()))
    except (OSError, ValueError, TypeError) as error:
        raise InputError(f"{meta_path} is corrupt ({error}).", _REBUILD) from None
    index = read_vectors(folder / INDEX_FILE, info.files.get(INDEX_FILE), _REBUILD)
    return info, index, _read_rows(folder / ROWS_FILE, info.files.get(ROWS_FILE), check_rows)


def _read_rows(path: Path, record: dict[str, int] | None, whole: bool) -> store.RowMap:
    """The row map, its size checked against its record (and with ``whole``, its CRC-32:
    checked on the very file the map then reads, which a rename cannot swap meanwhile)."""
    size = _size(path)
    if record is not None and size is not None and size != record["bytes"]:
        raise InputError(f"{path} is damaged: its size is not the one recorded.", _REBUILD)
    if record is None or not whole:
        return store.read_row_map(path)
    try:
        handle = open(path, "rb")  # noqa: SIM115 - the row map keeps it open
    except OSError:
        return store.read_row_map(path)  # gone meanwhile: its own error says so
    if handle_record(handle) != record:
        handle.close()
        raise InputError(f"{path} is damaged: its checksum is not the one recorded.", _REBUILD)
    handle.seek(0)
    return store.read_row_map(path, handle)


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _check_source(info: IndexInfo) -> None:
    """Refuse an index whose embeddings folder holds other shards than it was built from.

    An index is self-contained: once its folder is moved, deleted or left on another machine
    (no shards there), there is nothing to be stale against, and it is searched as it is.
    """
    source = Path(info.source)
    now = store.shard_signature(source)
    if not now:
        return
    if now != info.shards:
        recorded = {s["name"] for s in info.shards}
        current = {s["name"] for s in now}
        changed = sum(1 for s in now if s["name"] in recorded and s not in info.shards)
        raise InputError(
            f"The embeddings in {source} changed since the index was built "
            f"({len(current - recorded)} shards added, {len(recorded - current)} removed, "
            f"{changed} modified).",
            f"Bring the index up to date: clipkit index {source} -o <this index> --update "
            "(or rebuild it).",
        )


_REBUILD = "Rebuild it: clipkit index EMB_DIR -o INDEX_DIR"
