"""``clipkit search``: text and image queries, combined with weights, against an index or an
embeddings folder (exact, no index needed)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clipkit import store
from clipkit.config import DEFAULT_MODEL_SPEC, Runtime
from clipkit.errors import InputError, UsageError
from clipkit.index.exact import exact_topk_stream
from clipkit.infra.fields import check_config
from clipkit.infra.progress import ProgressCallback
from clipkit.inputs.filenames import locate, reading_base
from clipkit.models.runtime import RuntimeChoice, load_matching_encoder
from clipkit.models.specs import ChoosesAModel
from clipkit.score.arrays import as_numpy
from clipkit.search.folder import FolderRefresh, refresh_folder

KINDS = ("image", "text", "all")


@dataclass(frozen=True)
class SearchConfig(ChoosesAModel):
    """Queries and where to look. Without ``batch``, texts and images form ONE weighted query."""

    texts: tuple[str, ...] = ()
    images: tuple[Path, ...] = ()
    weights: tuple[float, ...] | None = None
    batch: bool = False  # each text is its own query (from --queries FILE)
    index_dir: Path | None = None
    embeddings_dir: Path | None = None
    # A folder of images, embedded and indexed in the user's cache and kept up to date
    # (clipkit.search.folder); its model is ``model``, else ``default_model``.
    folder: Path | None = None
    default_model: str = DEFAULT_MODEL_SPEC
    # With embeddings_dir: "image", "text" or "all" rows; None: the folder's images if it has
    # any, else its texts (so a text query finds pictures, not captions). An index holds one.
    kind: str | None = None
    k: int = 10
    model: str | None = None
    device: str = "auto"
    runtime: Runtime | None = None  # None: $CLIPKIT_RUNTIME, else auto

    def __post_init__(self) -> None:
        check_config(self)  # str or Path for paths; a wrong type fails here, by name


@dataclass(frozen=True)
class SearchHit:
    rank: int
    score: float
    id: str
    uri: str
    kind: str
    text: str | None
    meta: dict[str, str] = field(default_factory=dict)  # the row's pass-through values, if any
    path: str = ""  # the uri as a path that opens from here (see clipkit.inputs.filenames.locate)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class QueryResult:
    query: str
    hits: tuple[SearchHit, ...]


@dataclass(frozen=True)
class SearchResult:
    results: tuple[QueryResult, ...]
    model: str
    source: str
    runtime: RuntimeChoice = RuntimeChoice("torch", "")
    kind: str = ""  # the rows searched: "image", "text" or "image and text"
    refresh: FolderRefresh | None = None  # with a folder: what bringing its cache up to date did


def search(config: SearchConfig, progress: ProgressCallback | None = None) -> SearchResult:
    """Run the queries and return the top-k rows for each. ``progress`` hears of the work of
    bringing a folder's cache up to date, if there is any.

    Raises:
        InputError: no queries, bad weights or k, unreadable images, missing or mismatched
            index/embeddings.
    """
    if config.k < 1:
        raise UsageError(f"-k must be at least 1, got {config.k}.", "Ask for 1 or more results.")
    given = [config.index_dir, config.embeddings_dir, config.folder]
    if sum(where is not None for where in given) != 1:
        raise UsageError(
            "Give exactly one of --in, --index and --embeddings.",
            "--in searches a folder of images (indexed on first use); --index a FAISS index; "
            "--embeddings an embeddings folder, exactly.",
        )
    if not config.texts and not config.images:
        raise UsageError("No query given.", 'Pass text ("a photo of a dog"), --image or --queries.')
    if any(not text.strip() for text in config.texts):
        raise UsageError("A text query is empty.", "Pass words to search for, or only --image.")
    if config.batch and config.images:
        raise UsageError("--queries cannot be combined with --image.", "Run them separately.")
    if config.kind not in (None, *KINDS):
        raise UsageError(f"Unknown kind {config.kind!r}.", f"Use {', '.join(KINDS)}.")
    config.given_spec  # noqa: B018 - parsed once, before any heavy import: a typo fails here
    labels, weights = _labels_and_weights(config)
    refresh = None
    if config.folder is not None:
        if config.kind not in (None, "image"):
            raise UsageError("--in searches images only.", "Drop --kind.")
        refresh = refresh_folder(
            config.folder,
            config.chosen_spec,
            device=config.device,
            runtime=config.runtime,
            progress=progress,
        )
    index_dir = refresh.cache.index_dir if refresh is not None else config.index_dir
    if index_dir is not None:
        from clipkit.index.load import load_index

        loaded = load_index(index_dir)
        stamp = store.ModelStamp(loaded.info.model, loaded.info.fingerprint, loaded.info.dim)
        encoder, runtime = _encoder(config, stamp)
        vectors = _query_vectors(encoder, config, weights)
        results = search_index(loaded, vectors, config.k, labels)
        source, searched = str(config.folder or index_dir), loaded.info.kind
    else:
        emb_dir = config.embeddings_dir
        assert emb_dir is not None
        recorded_stamp = store.read_stamp(emb_dir)
        if recorded_stamp is None:
            raise store.no_embeddings(emb_dir)
        searched = config.kind or store.default_kind(emb_dir)
        encoder, runtime = _encoder(config, recorded_stamp)
        vectors = _query_vectors(encoder, config, weights)
        only = None if searched == "all" else searched
        scores, found, rows = _exact(emb_dir, only, vectors, config.k)
        source = str(emb_dir)
        results = _results(labels, scores, found, rows, store.read_base(emb_dir))
    return SearchResult(
        results=results,
        model=encoder.spec,
        source=source,
        runtime=runtime,
        kind="image and text" if searched == "all" else searched,
        refresh=refresh,
    )


def search_index(
    loaded: Any, vectors: np.ndarray, k: int, labels: Sequence[str]
) -> tuple[QueryResult, ...]:
    """The top-k rows of a loaded index (``clipkit.index.load.LoadedIndex``) for each of the
    (Q, D) unit query ``vectors``, labelled by ``labels`` (Q,)."""
    scores, found = loaded.search(vectors, k)
    return index_hits(loaded, scores, found, labels)


def index_hits(
    loaded: Any, scores: np.ndarray, found: np.ndarray, labels: Sequence[str]
) -> tuple[QueryResult, ...]:
    """The hits of ``loaded.search``'s (Q, k) scores and row numbers (-1: none), one result
    per label: the rows read from the index's table, paths opened from here."""
    found, rows = _hit_rows(found, loaded.rows.take)
    return _results(labels, scores, found, rows, loaded.info.base)


def check_weights(weights: Sequence[float], parts: Sequence[str], hint: str) -> list[float]:
    """``weights`` if they can weigh ``parts``: finite, one per part, at least one positive.

    Raises:
        UsageError: saying which rule they break; ``hint`` says how parts are counted.
    """
    if not all(math.isfinite(w) for w in weights):
        shown = ", ".join(f"{w:g}" for w in weights)
        raise UsageError(f"Query weights must be finite numbers, got {shown}.", "e.g. 1,-0.5")
    if len(weights) != len(parts):
        raise UsageError(
            f"{len(weights)} weights for {len(parts)} query parts ({', '.join(parts)}).", hint
        )
    if not any(w > 0 for w in weights):
        raise UsageError("At least one query weight must be positive.", "e.g. 1,-0.5")
    return list(weights)


def combine(parts: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """(1, D) the unit-norm weighted sum of (P, D) unit query embeddings, one finite weight each.

    Only the weights' ratios count: they are divided by the largest first and summed in
    float64, so 1e20 does not overflow float32 (into a zero query that scored every hit 0)
    and 1e-10 alone is a query like 1.

    Raises:
        InputError: the weighted sum cancels out.
    """
    scaled = np.asarray(weights, dtype=np.float64)
    largest = float(np.abs(scaled).max())
    total = (scaled[:, None] / (largest or 1.0) * parts.astype(np.float64)).sum(0, keepdims=True)
    norm = float(np.linalg.norm(total))
    if norm < 1e-6:  # all weights 0, or parts that cancel
        raise InputError("The weighted query cancels out to nothing.", "Change the weights.")
    return (total / norm).astype(np.float32)


def _results(
    labels: Sequence[str],
    scores: np.ndarray,
    found: np.ndarray,
    rows: dict[str, list[Any]],
    recorded_base: str | None,
) -> tuple[QueryResult, ...]:
    """Hits from (Q, k) scores and positions in ``rows`` (-1: none), paths opened from here."""
    extra = [name for name in rows if name not in ("id", "uri", "kind", "text")]
    base = reading_base(recorded_base)
    results = []
    for label, row_scores, row_found in zip(labels, scores, found, strict=True):
        hits = tuple(
            SearchHit(
                rank=r + 1,
                score=float(s),
                id=rows["id"][i],
                uri=rows["uri"][i],
                kind=rows["kind"][i],
                text=rows["text"][i],
                meta={name: rows[name][i] for name in extra if rows[name][i] is not None},
                path=locate(rows["uri"][i], base),
            )
            for r, (s, i) in enumerate(zip(row_scores.tolist(), row_found.tolist(), strict=True))
            if i >= 0  # FAISS pads with -1 when fewer than k rows are reachable
        )
        results.append(QueryResult(query=label, hits=hits))
    return tuple(results)


def _labels_and_weights(config: SearchConfig) -> tuple[list[str], list[float]]:
    if config.batch:
        if config.weights:
            raise UsageError("--weights does not apply to --queries.", "Drop --weights.")
        return list(config.texts), [1.0] * len(config.texts)
    parts = [*config.texts, *(f"image:{p}" for p in config.images)]
    weights = check_weights(
        list(config.weights) if config.weights else [1.0] * len(parts),
        parts,
        "Give one weight per part, text first, then each --image in order.",
    )
    label = " + ".join(f"{w:g}×{p}" if w != 1 else p for p, w in zip(parts, weights, strict=True))
    return [label], weights


def _encoder(config: SearchConfig, stamp: store.ModelStamp) -> tuple[Any, RuntimeChoice]:
    return load_matching_encoder(
        stamp.spec,
        stamp.fingerprint,
        spec=config.given_spec,
        device=config.device,
        runtime=config.runtime,
    )


def _query_vectors(encoder: Any, config: SearchConfig, weights: Sequence[float]) -> np.ndarray:
    """(Q, D) unit-norm float32 query vectors: one per text in batch mode, else one weighted
    sum. ``encoder`` is either runtime's: torch tensors and NumPy arrays both come back here
    as NumPy."""
    parts = []
    if config.texts:
        parts.append(as_numpy(encoder.encode_texts(list(config.texts))))
    if config.images:
        prepared = [encoder.prepare_image(_open_image(p)) for p in config.images]
        if isinstance(prepared[0], np.ndarray):
            pixels: Any = np.stack(prepared)
        else:
            import torch

            pixels = torch.stack(prepared)
        parts.append(as_numpy(encoder.encode_images(pixels)))
    vectors = np.concatenate(parts).astype(np.float32)
    if not np.isfinite(vectors).all():
        raise InputError(
            f"{encoder.spec} returned a non-finite (NaN or inf) query embedding.",
            "Its weights are corrupt: use the checkpoint from before training diverged.",
        )
    if not config.batch:
        return combine(vectors, weights)
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def _open_image(path: Path):
    # Pillow comes with these: imported for image queries only
    from clipkit.inputs.decode import DecodeError, decode_image
    from clipkit.inputs.files import read_bytes

    try:
        return decode_image(read_bytes(str(path), regular_only=False))
    except DecodeError as error:
        raise InputError(
            f"Query image {path} is unreadable: {error.reason}.",
            "Pass a readable JPEG, PNG, WebP, BMP, GIF or TIFF file.",
        ) from None


def _hit_rows(
    found: np.ndarray, fetch: Callable[[list[int]], dict[str, list[Any]]]
) -> tuple[np.ndarray, dict[str, list[Any]]]:
    """The rows that were hit, read once each: ``found`` (Q, k) row numbers (-1: none) become
    positions in the returned columns (``fetch`` reads rows by number, in the order given)."""
    # sorted(set()), not np.unique: np.unique imports numpy.ma, 30 ms of a 0.5 s search
    hits = np.array(sorted(set(found[found >= 0].tolist())), dtype=np.int64)
    rows = fetch(hits.tolist())
    return np.where(found >= 0, np.searchsorted(hits, found), -1), rows


def _exact(emb_dir: Path, kind: str | None, queries: np.ndarray, k: int):
    """Exact top-k over an embeddings folder: (Q, k) scores, (Q, k) positions in the returned
    row map (-1 where no row), and that row map, which holds the hits only.

    Only the ids of the scanned rows are kept (32 bytes a row); the hits' uris, texts and
    pass-through values are read afterwards. Holding every row's strings cost about 0.3 GB
    per million rows (benchmarks/bench_exact_search_memory.py).
    """
    shards = store.snapshot(emb_dir)
    id_blocks: list[np.ndarray] = []

    def blocks():
        for ids, vectors in store.iter_ids_and_vectors(shards, kind):
            id_blocks.append(ids)
            yield vectors

    scores, found = exact_topk_stream(queries, blocks(), k)
    if found.shape[1] == 0:
        what = f"{kind} embeddings" if kind else "embeddings"
        raise InputError(f"{emb_dir} holds no {what} to search.", "Check --kind, or embed first.")
    starts = np.cumsum([0] + [len(ids) for ids in id_blocks])

    def fetch(numbers: list[int]) -> dict[str, list[Any]]:
        hit_ids = []
        for r in numbers:
            block = int(np.searchsorted(starts, r, side="right")) - 1
            item_id = id_blocks[block][r - starts[block]]
            hit_ids.append(item_id.decode("utf-8") if isinstance(item_id, bytes) else item_id)
        read = store.read_rows_by_id(shards, hit_ids)
        rows: dict[str, list[Any]] = {"id": hit_ids}
        for n, item_id in enumerate(hit_ids):
            for name, value in read[item_id].items():
                rows.setdefault(name, [None] * len(hit_ids))[n] = value
        return rows

    positions, rows = _hit_rows(found, fetch)
    return scores, positions, rows
