"""A folder's own embeddings and index, kept in the user's cache and brought up to date before
each ``clipkit search "a dog" --in DIR`` (rclip's one command).

The cache of one folder and one model is ``<cache>/<folder key>/<model key>/`` (``<cache>``:
``$CLIPKIT_FOLDER_CACHE``, else ``~/.cache/clipkit/folders``) with ``embeddings/``, ``index/``
and ``folder.json``. Before a search, a walk of the folder checked against embed's stat cache
says whether an image is new, edited or gone; only then is the model loaded, the changes
embedded (``embed --prune``) and the index updated (``index --update``). When nothing changed,
no image is read and no model is loaded for the refresh.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipkit import store
from clipkit.config import ENV_FOLDER_CACHE, Runtime
from clipkit.errors import InputError
from clipkit.index.load import read_info
from clipkit.infra.atomic import atomic_path, make_folder
from clipkit.infra.locks import writer_lock
from clipkit.infra.progress import ProgressCallback, ProgressReport, no_progress
from clipkit.inputs.filenames import UriFrame, os_path
from clipkit.inputs.sources import Item, Kind, SourceOptions, discover
from clipkit.inputs.stat_cache import file_stat, recorded_id
from clipkit.models.exported import cached_export, checkpoint_files
from clipkit.models.specs import ModelSpec, as_spec

STATE_FILE = "folder.json"


@dataclass(frozen=True)
class FolderCache:
    """Where the embeddings and the index of ``folder`` under one model are kept."""

    folder: Path  # resolved
    root: Path

    @property
    def emb_dir(self) -> Path:
        return self.root / "embeddings"

    @property
    def index_dir(self) -> Path:
        return self.root / "index"


@dataclass(frozen=True)
class FolderRefresh:
    """What bringing a folder's cache up to date did (all zero when nothing had changed)."""

    cache: FolderCache
    updated: bool  # the model ran or the index was rebuilt/updated
    embedded: int = 0
    pruned: int = 0  # rows of images that are gone or were edited
    failures: tuple[tuple[str, str, str], ...] = ()  # (uri, stage, error) skipped this time
    export_note: str = ""  # what became of the ONNX export that makes later searches fast


def cache_root() -> Path:
    """``$CLIPKIT_FOLDER_CACHE``, else ``$XDG_CACHE_HOME/clipkit/folders`` (``~/.cache``)."""
    explicit = os.environ.get(ENV_FOLDER_CACHE)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "clipkit" / "folders"


def folder_cache(folder: str | os.PathLike[str], model: str | ModelSpec) -> FolderCache:
    """The cache of ``folder`` (resolved: any path to it shares one cache) and ``model``.

    The model's key is its spec as artifacts record it plus, for a checkpoint, its files' sizes
    and times (as the ONNX cache finds a spec's export): a retrained checkpoint gets a fresh
    cache, without loading the model to fingerprint it.

    Raises:
        InputError: ``folder`` does not exist or is not a folder.
    """
    path = Path(folder).expanduser()
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        raise InputError(f"{folder} {what}.", "Pass --in a folder of images.")
    resolved = path.resolve()
    parsed = as_spec(model)
    identity = json.dumps([parsed.recorded, checkpoint_files(parsed)])
    return FolderCache(resolved, cache_root() / _key(str(resolved)) / _key(identity))


def refresh_folder(
    folder: str | os.PathLike[str],
    model: str | ModelSpec,
    *,
    device: str = "auto",
    runtime: Runtime | None = None,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> FolderRefresh:
    """Bring the cache of ``folder`` under ``model`` up to date with the images in it.

    Raises:
        InputError: the folder is missing or holds no image; the model cannot be loaded.
    """
    spec = as_spec(model)
    cache = folder_cache(folder, spec)
    if not _stale(cache, *_walk(cache)):
        return FolderRefresh(cache, updated=False)
    report = progress or no_progress

    def waiting(holder: str) -> None:
        note = f"waiting for another clipkit command to update this folder's cache ({holder})"
        report(ProgressReport("", 0, 0, note=note))

    # One refresh of a folder's cache at a time; one that waited finds it fresh, as a rule
    with writer_lock(cache.root, f"search --in {cache.folder}", wait=waiting):
        items, unreadable = _walk(cache)
        if not _stale(cache, items, unreadable):
            return FolderRefresh(cache, updated=False)
        return _refresh(cache, spec, items, device, runtime, workers, report)


def _walk(cache: FolderCache) -> tuple[list[Item], dict[str, Any]]:
    """The folder's images now, and the unreadable ones the cache recorded."""
    frame = UriFrame(base=os_path(str(cache.folder)), cwd=os.getcwd())
    items = discover([str(cache.folder)], SourceOptions(Kind.IMAGE, frame=frame)).items
    return items, _read_state(cache).get("unreadable", {})


def _refresh(
    cache: FolderCache,
    spec: ModelSpec,
    items: Sequence[Item],
    device: str,
    runtime: Runtime | None,
    workers: int | None,
    report: ProgressCallback,
) -> FolderRefresh:
    embedded = _embed(cache, spec.text, device, runtime, workers, report)
    index_result = _index(cache)
    paths = {item.uri: item.path or "" for item in items}
    unreadable = {uri: file_stat(paths.get(uri, "")) for uri, _, _ in embedded.failures}
    from clipkit.models.runtime import ensure_cached_export

    fingerprint = index_result.info.fingerprint
    if not cached_export(fingerprint).is_dir():
        report(ProgressReport("", 0, 0, note="exporting the model to ONNX for fast searches"))
    _, note = ensure_cached_export(index_result.info.model, fingerprint)
    _write_state(cache, spec.text, index_result.info, unreadable)
    return FolderRefresh(
        cache,
        updated=True,
        embedded=embedded.embedded,
        pruned=embedded.pruned,
        failures=embedded.failures,
        export_note=note,
    )


def _key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _stale(cache: FolderCache, items: Sequence[Item], unreadable: dict[str, Any]) -> bool:
    """True when an image is new, edited or gone since the last refresh, or the index is
    missing or behind its embeddings. Reads file sizes and times, never an image."""
    info = read_info(cache.index_dir)
    if info is None or info.shards != store.shard_signature(cache.emb_dir):
        return True
    stats = store.read_file_stats(cache.emb_dir)
    existing = store.read_existing(cache.emb_dir)
    for item in items:
        now = file_stat(item.path or "")
        if recorded_id(stats, item.uri, now, existing.ids) is not None:
            continue
        # An image that failed to decode last time is tried again once it changes, not on
        # every search (it would load the model each time).
        if now is None or unreadable.get(item.uri) != list(now):
            return True
    found = {item.uri for item in items}
    return any(uri not in found for uri in existing.uris)


def _embed(
    cache: FolderCache,
    model: str,
    device: str,
    runtime: Runtime | None,
    workers: int | None,
    report: ProgressCallback,
) -> Any:
    from clipkit.embed.run import EmbedConfig, embed

    make_folder(cache.root)
    config = EmbedConfig(
        sources=(str(cache.folder),),
        out_dir=cache.emb_dir,
        model=model,
        kind=Kind.IMAGE,
        device=device,
        workers=workers,
        prune=True,
        runtime=runtime,
        base=cache.folder,
    )
    return embed(config, report)


def _index(cache: FolderCache) -> Any:
    """Update the index, or build it afresh where there is none, it is damaged, or it still
    holds rows of gone images (HNSW cannot remove points)."""
    from clipkit.index.build import build_index
    from clipkit.index.config import IndexConfig

    if read_info(cache.index_dir) is not None:
        update = IndexConfig(cache.emb_dir, cache.index_dir, kind="image", update=True)
        try:
            result = build_index(update)
            if not result.removed:
                return result
        except InputError:  # a cache: rebuilt, not repaired by hand
            pass
    shutil.rmtree(cache.index_dir, ignore_errors=True)
    return build_index(IndexConfig(cache.emb_dir, cache.index_dir, kind="image"))


def _read_state(cache: FolderCache) -> dict[str, Any]:
    try:
        state = json.loads((cache.root / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _write_state(
    cache: FolderCache, model: str, info: Any, unreadable: dict[str, tuple[int, int] | None]
) -> None:
    """``folder.json``: which folder and model this cache serves (for a person browsing the
    cache), and the images that could not be read, with their size and time then."""
    state = {
        "folder": str(cache.folder),
        "model": model,
        "fingerprint": info.fingerprint,
        "rows": info.rows,
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "unreadable": {uri: list(stat) for uri, stat in unreadable.items() if stat is not None},
    }
    with atomic_path(cache.root / STATE_FILE) as staging:
        staging.write_text(json.dumps(state, indent=2, sort_keys=True), encoding="utf-8")
