"""FAISS indexes over an embeddings folder: choose, build, tune, measure, update, load, search.

The only module that imports faiss. An index folder holds ``index.faiss``, ``rows.parquet``
(index row -> id, uri, kind, text) and ``index.json`` (model, fingerprint, dim, metric, factory
string and search parameters, rows, source shards, build time and recall@10 measured against
exact search, for same-kind and, where the folder has both kinds, cross-modal queries).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from clipkit import store
from clipkit.errors import InputError
from clipkit.index.config import IndexConfig, preflight
from clipkit.index.load import (
    INDEX_FILE,
    ROWS_FILE,
    IndexInfo,
    load_index,
)
from clipkit.index.parts import PARTS, checksum_record, repair, write_vectors
from clipkit.index.recall import (
    RECALL_K,
    QuerySet,
    drop_self,
    exact_neighbours,
    measured_recall,
    query_sets,
    scan,
)
from clipkit.infra.atomic import (
    atomic_paths,
    make_folder,
    remove_stale_temporaries,
)
from clipkit.infra.locks import publishing, writer_lock

NPROBE_STEPS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
EF_STEPS = (16, 32, 64, 128, 256, 512, 1024, 2048)
PQ_SUBQUANTIZERS = (8, 16, 32, 48, 64, 96, 128, 256)
PQ_MIN_ROWS = 256  # an 8-bit product quantiser trains 256 centroids per sub-vector


@dataclass(frozen=True)
class IndexResult:
    info: IndexInfo
    out_dir: Path
    added: int  # rows added by this run (all of them for a fresh build)
    removed: int  # gone rows an HNSW index still holds (it cannot remove points): rebuild
    dropped: int = 0  # rows this update took out of a Flat or IVF index (their id is gone)


def build_index(config: IndexConfig) -> IndexResult:
    """Build (or with ``update``, extend) the index of an embeddings folder.

    Raises:
        InputError: no embeddings, unknown type, an update of a missing or foreign index.
    """
    started = time.perf_counter()
    preflight(config)
    shards = store.snapshot(config.emb_dir)  # every pass reads these, whatever embed adds
    stamp = store.read_stamp(shards)
    if stamp is None:  # the shards went between the check and the snapshot
        raise store.no_embeddings(config.emb_dir)
    kind = _resolve_kind(config, shards)
    command = f"index {'--update ' if config.update else ''}-o {config.out_dir}"
    with writer_lock(config.out_dir, command, create=not config.update):
        _recover(config.out_dir)
        if config.update:
            return _update(config, shards, stamp, kind, started)
        return _build(config, shards, stamp, kind, started)


def _build(
    config: IndexConfig,
    shards: Sequence[store.Shard],
    stamp: store.ModelStamp,
    kind: str,
    started: float,
) -> IndexResult:
    rows, reservoir, other = scan(shards, kind, config.seed)
    sample = reservoir.array()
    if not rows["id"]:
        raise InputError(f"{config.emb_dir} holds no {kind} embeddings.", "Try --kind text.")
    factory = choose_factory(len(rows["id"]), stamp.dim, config)
    index = new_index(stamp.dim, factory)
    if not index.is_trained:
        # 64 points per list is within faiss's advice (30-256) and bounds k-means time.
        # The reservoir is in stream order until it overflows: shuffle before taking a part.
        lists = ivf_lists(len(rows["id"]))
        order = np.random.default_rng(config.seed).permutation(len(sample))
        index.train(np.ascontiguousarray(sample[order[: max(64 * lists, 10_000)]]))
    for block in store.iter_vectors(shards, kind):
        index.add(block.vectors)
    queries = query_sets(reservoir, other, config.seed)
    params, recall = tune(index, queries, shards, kind, config.target_recall)
    info = IndexInfo(
        model=stamp.spec,
        fingerprint=stamp.fingerprint,
        dim=stamp.dim,
        kind=kind,
        factory=factory,
        params=params,
        rows=index.ntotal,
        source=str(config.emb_dir.resolve()),
        shards=store.shard_signature(shards),
        build_seconds=time.perf_counter() - started,
        recall_at_10=recall,
        target_recall=config.target_recall,
        base=store.read_base(shards),
    )
    _write(config.out_dir, index, rows, info)
    return IndexResult(info=info, out_dir=config.out_dir, added=index.ntotal, removed=0)


def choose_factory(rows: int, dim: int, config: IndexConfig) -> str:
    """The FAISS factory string for ``rows`` vectors, in the spirit of autofaiss.

    Exact ``Flat`` up to ``flat_threshold`` rows; above it IVF with ~2·sqrt(rows) lists, storing
    full vectors when they fit the memory budget, 8-bit scalar-quantised ones when a quarter
    fits, else product-quantised codes sized to the budget.
    """
    kind = config.index_type
    if kind not in ("auto", "flat", "hnsw", "ivf", "ivfpq"):
        raise InputError(f"Unknown index type {kind!r}.", "Use auto, flat, hnsw, ivf or ivfpq.")
    lists = ivf_lists(rows)
    if kind == "flat" or (kind == "auto" and rows <= config.flat_threshold):
        return "Flat"
    if kind == "hnsw":
        return "HNSW32,Flat"
    budget = config.max_memory or _default_budget()
    if kind == "ivf" or (kind == "auto" and rows * dim * 4 * 1.1 <= budget):
        return f"IVF{lists},Flat"
    if kind == "auto" and (rows * dim * 1.1 <= budget or rows < PQ_MIN_ROWS):
        return f"IVF{lists},SQ8"
    if rows < PQ_MIN_ROWS:
        raise InputError(
            f"--type ivfpq needs at least {PQ_MIN_ROWS} rows to train its codebooks; "
            f"{config.emb_dir} has {rows}.",
            "Use --type flat: exact, and fast at this size.",
        )
    code_bytes = max(8, min(dim // 2, int(budget / (1.1 * rows))))
    # Sub-vectors must split the dimension evenly; prefer the counts faiss tunes for.
    fitting = [s for s in range(1, min(dim, code_bytes) + 1) if dim % s == 0]
    subquantizers = max([s for s in fitting if s in PQ_SUBQUANTIZERS] or fitting)
    return f"IVF{lists},PQ{subquantizers}"


def new_index(dim: int, factory: str) -> faiss.Index:
    """An empty inner-product index for a factory string, set up to train quickly.

    ``index_factory`` turns on polysemous training for IVF-PQ: an annealing over the order of
    each codebook that pays off only for Hamming-filtered search (``polysemous_ht``), which
    clipkit never uses. It took 17 s per 10 sub-quantizers here, whatever the data size.
    """
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    ivf = _ivf_of(index)
    concrete = faiss.downcast_index(ivf) if ivf is not None else None
    if isinstance(concrete, faiss.IndexIVFPQ):
        concrete.do_polysemous_training = False  # type: ignore[attr-defined]  # SWIG, not in stubs
    return index


def ivf_lists(rows: int) -> int:
    """Inverted lists for ``rows`` vectors: 2·sqrt(rows), with >= 39 training points each.

    Fewer lists than autofaiss's 4-16·sqrt(rows) keep k-means training within a minute on two
    cores for a million vectors; the search-time cost is paid back by tuning nprobe.
    """
    return max(1, min(65536, int(2 * math.sqrt(rows)), rows // 39))


def tune(
    index: faiss.Index,
    queries: dict[str, QuerySet],
    shards: store.Shards,
    kind: str,
    target: float,
) -> tuple[dict[str, int], dict[str, float | None]]:
    """Smallest nprobe/efSearch whose recall@10 reaches ``target`` for every query set.

    Sample queries taken from the indexed rows are scored leave-one-out: their own row is
    dropped from both the exact and the approximate results, since finding oneself is free.
    """
    live = {name: q for name, q in queries.items() if len(q.vectors)}
    truth = {name: exact_neighbours(q, shards, kind) for name, q in live.items()}
    recall: dict[str, float | None] = {"same_kind": None, "cross_modal": None}
    knob, steps = _knob(index)
    chosen: dict[str, int] = {}
    for value in steps or (None,):
        if knob is not None and value is not None:
            faiss.ParameterSpace().set_index_parameter(index, knob, value)
            chosen = {knob: value}
        for name, q in live.items():
            _, found = index.search(q.vectors, RECALL_K + 1)
            recall[name] = measured_recall(drop_self(found, q.rows), truth[name])
        if all(r is None or r >= target for r in recall.values()):
            break
    return chosen, recall


def _knob(index: faiss.Index) -> tuple[str | None, tuple[int, ...]]:
    concrete = faiss.downcast_index(index)
    if isinstance(concrete, faiss.IndexHNSW):
        return "efSearch", EF_STEPS
    ivf = _ivf_of(index)
    if ivf is None:
        return None, ()
    return "nprobe", tuple(n for n in NPROBE_STEPS if n < ivf.nlist) + (ivf.nlist,)


def _resolve_kind(config: IndexConfig, shards: Sequence[store.Shard]) -> str:
    if config.kind in ("image", "text"):
        return config.kind
    if config.kind != "auto":
        raise InputError(f"Unknown kind {config.kind!r}.", "Use image, text or auto.")
    return store.default_kind(shards)


def _default_budget() -> int:
    pages = os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 2**21
    return int(pages * os.sysconf("SC_PAGE_SIZE") * 0.5)


def _write(out_dir: Path, index: faiss.Index, rows: dict[str, list[Any]], info: IndexInfo):
    """Stage the three parts, then replace them together (see :mod:`clipkit.infra.locks`);
    the sidecar records the others' checksums (see :mod:`clipkit.index.parts`)."""
    make_folder(out_dir)
    targets = [out_dir / name for name in PARTS]
    with atomic_paths(targets, commit=lambda: publishing(out_dir)) as (vectors, row_map, sidecar):
        files = {INDEX_FILE: write_vectors(index, vectors)}
        store.write_row_map(row_map, rows)
        files[ROWS_FILE] = checksum_record(row_map)
        sidecar.write_text(json.dumps(replace(info, files=files).as_dict(), indent=2))


def _recover(out_dir: Path) -> None:
    """Before writing: repair a set a killed writer left half-replaced (see ``parts.repair``)
    and delete the files it staged. The caller holds the writer lock."""
    if out_dir.is_dir():
        repair(out_dir)
        remove_stale_temporaries(out_dir)


def _update(
    config: IndexConfig,
    shards: Sequence[store.Shard],
    stamp: store.ModelStamp,
    kind: str,
    started: float,
) -> IndexResult:
    loaded = load_index(config.out_dir, check_source=False)
    info = loaded.info
    if info.fingerprint != stamp.fingerprint:
        raise InputError(
            f"The index in {config.out_dir} was built from {info.model}; {config.emb_dir} "
            f"holds embeddings of {stamp.spec}.",
            "Build a new index for the new model (without --update).",
        )
    rows = loaded.rows.to_lists()
    known = set(rows["id"])
    position_of = {item_id: position for position, item_id in enumerate(rows["id"])}
    current: set[str] = set()
    added = 0
    for block in store.iter_vectors(shards, info.kind, meta=True):
        current.update(block.ids)
        for row, (item_id, uri) in enumerate(zip(block.ids, block.uris, strict=True)):
            position = position_of.get(item_id)
            if position is not None:
                # `embed --prune` may have moved a row to another path, and a later table run
                # may have given it pass-through values (its caption, say)
                rows["uri"][position] = uri
                for name, values in block.meta.items():
                    if values[row] is not None:
                        rows.setdefault(name, [None] * len(rows["id"]))[position] = values[row]
        new = [i for i, item_id in enumerate(block.ids) if item_id not in known]
        if new:
            loaded.index.add(block.vectors[new])
            block.append_to(rows, new)
            known.update(block.ids[i] for i in new)
            added += len(new)
    dropped = _drop_gone(loaded.index, rows, current)
    removed = len(known - current) - dropped
    updated = IndexInfo(
        **{
            **info.as_dict(),
            "rows": loaded.index.ntotal,
            "removed_rows": removed,
            "shards": store.shard_signature(shards),
            "source": str(config.emb_dir.resolve()),
            "build_seconds": info.build_seconds + time.perf_counter() - started,
            "base": store.read_base(shards),
        }
    )
    _write(config.out_dir, loaded.index, rows, updated)
    return IndexResult(
        info=updated, out_dir=config.out_dir, added=added, removed=removed, dropped=dropped
    )


def _drop_gone(index: faiss.Index, rows: dict[str, list[Any]], current: set[str]) -> int:
    """Take rows whose id left the embeddings folder out of the index; returns how many.

    Afterwards row ``r`` of ``rows`` is still vector ``r`` of the index, as everything else
    assumes. A flat index closes its gaps in order by itself; an IVF index keeps each entry's
    number, so the survivors are renumbered in place (its lists stay valid: removing points
    does not move a centroid). An HNSW graph cannot remove points: its gone rows stay, and are
    reported for a rebuild.
    """
    gone = [position for position, item_id in enumerate(rows["id"]) if item_id not in current]
    flat = isinstance(faiss.downcast_index(index), faiss.IndexFlat)
    ivf = _ivf_of(index)
    if not gone or not (flat or ivf):
        return 0
    # faiss's Python wrapper takes an id array; its stubs only know the C++ IDSelector form
    index.remove_ids(np.asarray(gone, dtype=np.int64))  # type: ignore[arg-type]
    kept = np.ones(len(rows["id"]), dtype=bool)
    kept[gone] = False
    if ivf is not None:
        _renumber(ivf, np.cumsum(kept) - 1)
    for name, values in rows.items():
        rows[name] = [value for value, keep in zip(values, kept.tolist(), strict=True) if keep]
    return len(gone)


def _ivf_of(index: faiss.Index) -> faiss.IndexIVF | None:
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def _renumber(ivf: faiss.IndexIVF, new_number: np.ndarray) -> None:
    """Map every stored entry's number ``n`` to ``new_number[n]``, list by list."""
    lists = ivf.invlists
    assert lists is not None  # an IVF index always has its inverted lists
    for list_no in range(ivf.nlist):
        size = lists.list_size(list_no)
        if not size:
            continue
        numbers = faiss.rev_swig_ptr(lists.get_ids(list_no), size)
        mapped = np.ascontiguousarray(new_number[numbers], dtype=np.int64)
        codes = faiss.rev_swig_ptr(lists.get_codes(list_no), size * lists.code_size).copy()
        lists.update_entries(list_no, 0, size, faiss.swig_ptr(mapped), faiss.swig_ptr(codes))


# Below this many queries, the scoring core's blocked top-k beats faiss's flat scan, which
# stays near 65-85 queries/s up to at least 128 queries at 200k x 512 on two cores. From 256 on
# faiss switches to sgemm too and the two run level (measured: benchmarks/RESULTS.md), so
# faiss keeps those batches.
