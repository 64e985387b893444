"""``clipkit embed``: images and texts to Parquet embedding shards, resumable and incremental.

Worker processes read, hash, decode and preprocess images while the model encodes the previous
batch. An item whose content id is already in the output folder is not decoded again; identical
content found under another path is recorded as an alias instead of a second row.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clipkit import store
from clipkit.config import Runtime, StoredPrecision
from clipkit.embed import plan as embed_plan
from clipkit.embed.shards import ShardWriter, StoredMeta, column_name
from clipkit.errors import InputError, SkippedInputsError, UsageError
from clipkit.infra import distributed
from clipkit.infra.atomic import remove_stale_temporaries
from clipkit.infra.fields import check_config
from clipkit.infra.locks import writer_lock
from clipkit.infra.progress import ProgressCallback, ProgressReport, no_progress
from clipkit.inputs.decode import DEFAULT_MAX_PIXELS, DecodeError, content_id, decode_text, text_id
from clipkit.inputs.filenames import UriFrame, as_text, os_path
from clipkit.inputs.files import read_bytes
from clipkit.inputs.pipeline import ImageDataset, default_workers, image_batches
from clipkit.inputs.sources import Item, Kind, SourceOptions, discover
from clipkit.inputs.stat_cache import file_stat, recorded_id
from clipkit.inputs.tarshards import MEMBER_SEPARATOR, TAR_SUFFIX
from clipkit.models.runtime import RuntimeChoice, load_encoder
from clipkit.models.specs import ModelSpec, parse_spec
from clipkit.score.arrays import as_numpy

NON_FINITE = "the model returned a non-finite embedding (NaN or inf): are its weights corrupt?"


@dataclass(frozen=True)
class EmbedConfig:
    """What to embed, with which model, and where to write it."""

    sources: tuple[str, ...]
    out_dir: Path
    model: str
    kind: Kind = Kind.AUTO
    batch_size: int = 64
    workers: int | None = None
    device: str = "auto"
    precision: StoredPrecision = "fp32"  # of the vectors written; fp16 halves the folder
    strict: bool = False  # raise SkippedInputsError, after the work, if any input was skipped
    lines: bool = False
    include_hidden: bool = False
    image_column: str | None = None
    text_column: str | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    shard_rows: int = 50_000
    prune: bool = False  # make the folder mirror the sources: drop rows of vanished inputs
    rehash: bool = False  # read every file again, even those whose size and mtime are unchanged
    runtime: Runtime | None = None  # None: $CLIPKIT_RUNTIME, else auto
    # What a new output folder's uris are relative to (None: the working folder); a folder
    # keeps the base its first run recorded.
    base: Path | None = None

    def __post_init__(self) -> None:
        check_config(self)  # str or Path for paths; a wrong type fails here, by name


@dataclass(frozen=True)
class EmbedResult:
    """What a run did; ``failures`` lists (uri, stage, error) for every skipped input."""

    out_dir: Path
    model: str
    fingerprint: str
    embedded: int
    already_present: int
    aliases: int
    failures: tuple[tuple[str, str, str], ...]
    truncated_texts: int
    replaced_texts: int
    ignored_files: int
    shards_written: int
    seconds: float
    device: str
    is_main: bool = True  # False on the other ranks of a torchrun job: they print nothing
    changed: int = 0  # inputs whose content differs from what their uri had when embedded
    pruned: int = 0  # rows removed by --prune (their content is no longer among the inputs)
    moved: int = 0  # rows whose uri --prune pointed at another input with the same content
    filled: int = 0  # rows already present that got pass-through values (a table's, say)
    runtime: RuntimeChoice = RuntimeChoice("torch", "")

    @property
    def skipped(self) -> int:
        return len(self.failures)

    @property
    def items_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0


@dataclass
class _EmbedRun:
    """Mutable state of one run: what is known, what is buffered, what was counted."""

    encoder: Any  # either runtime's: a torch Encoder or an OnnxEncoder
    known_ids: set[str]
    known_uris: dict[str, str]  # uri -> content id, as recorded in the folder (and this run)
    shards: ShardWriter
    current: dict[str, str] = field(default_factory=dict)  # uri -> content id found this run
    file_stats: dict[str, store.FileStat] = field(default_factory=dict)  # files read this run
    pending_stats: dict[str, tuple[int, int]] = field(default_factory=dict)  # before the read
    changed: int = 0
    embedded: int = 0
    already_present: int = 0
    aliases: list[tuple[str, str]] = field(default_factory=list)
    failures: list[tuple[str, str, str]] = field(default_factory=list)
    truncated: int = 0
    replaced: int = 0
    # content id -> pass-through values for a row that exists already (see seen)
    meta_of: dict[str, Mapping[str, str]] = field(default_factory=dict)

    def is_new(
        self,
        item_id: str,
        uri: str,
        pending: Collection[str],
        meta: Mapping[str, Any] | None = None,
    ) -> bool:
        """True when this content must be embedded; else it is counted as present or an alias
        (and its pass-through values ``meta`` kept for its row).

        ``pending`` holds the ids of the batch being assembled, not yet in ``known_ids``.
        """
        self.note(item_id, uri)
        if item_id in pending:
            self.aliases.append((item_id, uri))
            return False
        return not self.seen(item_id, uri, meta)

    def note(self, item_id: str, uri: str) -> None:
        """Record that this run found content ``item_id`` at ``uri``; count a changed file."""
        if uri in self.current:
            return
        self.current[uri] = item_id
        if self.known_uris.get(uri, item_id) != item_id:
            self.changed += 1

    def seen(self, item_id: str, uri: str, meta: Mapping[str, Any] | None = None) -> bool:
        """True (and counted) when this content is already embedded; its row is then given
        ``meta``'s pass-through values where it has none (a table embedded after the folder
        it captions links each image to its caption), the first item's values winning."""
        if item_id not in self.known_ids:
            return False
        if meta:
            self.meta_of.setdefault(item_id, StoredMeta(meta))
        if self.known_uris.get(uri) == item_id:
            self.already_present += 1
        else:  # a new path, or a path whose content became that of another file
            self.aliases.append((item_id, uri))
            self.known_uris[uri] = item_id
        return True

    def add(
        self,
        items: Sequence[Item],
        ids: Sequence[str],
        texts: Sequence[str | None],
        vectors: Any,
    ) -> None:
        """Buffer rows (vectors: (B, D), either runtime's); a non-finite embedding is a
        failure, never a row."""
        matrix: np.ndarray = as_numpy(vectors).astype(np.float32, copy=False)
        finite = np.isfinite(matrix).all(axis=1)
        if not finite.all():
            self._fail_non_finite(
                [
                    (item.uri, item_id)
                    for item, item_id, ok in zip(items, ids, finite, strict=True)
                    if not ok
                ]
            )
            items = [item for item, ok in zip(items, finite, strict=True) if ok]
            ids = [item_id for item_id, ok in zip(ids, finite, strict=True) if ok]
            texts = [text for text, ok in zip(texts, finite, strict=True) if ok]
            matrix = matrix[finite]
        self.shards.add(items, ids, texts, matrix)
        for item, item_id in zip(items, ids, strict=True):
            self.known_ids.add(item_id)
            self.known_uris[item.uri] = item_id
        self.embedded += len(items)

    def _fail_non_finite(self, failed: Sequence[tuple[str, str]]) -> None:
        """List (uri, id) pairs whose embedding was not finite, and the aliases of those ids.

        An alias recorded in the same batch as its first copy would otherwise point at an id
        that never got a row; identical content would have given the same bad embedding.
        """
        dropped = {item_id for _, item_id in failed} - self.known_ids
        orphans = [uri for item_id, uri in self.aliases if item_id in dropped]
        self.aliases = [(item_id, uri) for item_id, uri in self.aliases if item_id not in dropped]
        for uri in [uri for uri, _ in failed] + orphans:
            self.failures.append((uri, "encode", NON_FINITE))


def embed(config: EmbedConfig, progress: ProgressCallback | None = None) -> EmbedResult:
    """Embed every input of ``config.sources`` not already in ``config.out_dir``.

    Under ``torchrun`` each rank embeds a disjoint, deterministic share and writes its own
    shards; the rows equal a single-process run, and rank 0 writes the side tables.

    Raises:
        InputError: bad sources, or an output folder made by a different model.
        ClipkitError: the model cannot be loaded.
    """
    if config.batch_size < 1:
        raise UsageError("--batch-size must be at least 1.", "Try 64.")
    spec = parse_spec(config.model)  # its syntax before any heavy import; parsed once
    world = distributed.current_world()
    device, owns_group = distributed.start(world, config.device)
    try:
        shown = (progress or no_progress) if world.is_main else no_progress
        result = _embed(config, spec, world, device, shown)
        if config.strict and result.skipped and world.is_main:
            listed_in = str(config.out_dir / store.FAILURES_FILE)
            raise SkippedInputsError(result.skipped, listed_in, result)
        return result
    finally:
        if owns_group:
            distributed.finish(world)


def _embed(
    config: EmbedConfig,
    spec: ModelSpec,
    world: distributed.World,
    device: str,
    report: ProgressCallback,
) -> EmbedResult:
    started = time.perf_counter()
    frame = uri_frame(config.out_dir, config.base)
    options = SourceOptions(
        config.kind,
        config.lines,
        config.include_hidden,
        config.image_column,
        config.text_column,
        frame,
    )
    found = discover(config.sources, options)
    encoder, runtime = load_encoder(spec, device=device, runtime=config.runtime, bulk=True)
    with writer_lock(config.out_dir, f"embed -o {config.out_dir}", active=world.is_main):
        run = _start_run(config, encoder, found.items, world, as_text(frame.base))
        if world.is_main:  # every rank found them; one lists them
            run.failures.extend(found.failures)
        images = [item for item in found.items if item.kind == "image"]
        texts = [item for item in found.items if item.kind == "text"]
        workers = config.workers if config.workers is not None else default_workers()
        recorded = store.read_file_stats(config.out_dir)
        trusted = {} if config.rehash else recorded
        if world.distributed:
            texts = embed_plan.claim(run, world, texts, embed_plan.text_ids(texts))
            ids, run.file_stats = embed_plan.image_ids(
                images, world, workers, trusted, run.known_ids
            )
            images = embed_plan.claim(run, world, images, ids)
        else:
            images = _skip_unchanged(run, images, trusted)
        try:
            _embed_texts(run, texts, config.batch_size, report)
            _embed_images(run, images, config, workers, report)
        except KeyboardInterrupt:
            run.shards.flush()  # keep every finished embedding: the next run resumes after them
            _save_file_stats(config, run, world, recorded)
            raise
        run.shards.flush()
        _save_file_stats(config, run, world, recorded)
        result = _finish(config, run, world, encoder, found.ignored, time.perf_counter() - started)
        return dataclasses.replace(result, runtime=runtime)


def uri_frame(out_dir: Path, new_base: Path | None = None) -> UriFrame:
    """Uris relative to the folder's recorded base, so that a run from another folder names
    each file as the first run did; a new folder's base (or a folder's that no longer
    exists, or one from before bases were recorded) is ``new_base``, else this run's working
    folder."""
    here, recorded = os.getcwd(), store.read_base(out_dir)
    if recorded is not None:
        base = os_path(recorded)
    else:
        base = os.path.abspath(new_base) if new_base is not None else here
    return UriFrame(base=base if os.path.isdir(base) else here, cwd=here)


def _save_file_stats(
    config: EmbedConfig,
    run: _EmbedRun,
    world: distributed.World,
    recorded: dict[str, store.FileStat],
) -> None:
    """Write the stat cache (rank 0, which holds every rank's stats). Without --prune, files of
    other sources keep their entries: a stale entry costs a read, never a wrong row."""
    if world.is_main:
        images_pruned = config.prune and config.kind is not Kind.TEXT
        store.write_file_stats(
            config.out_dir, {**({} if images_pruned else recorded), **run.file_stats}
        )


def _skip_unchanged(
    run: _EmbedRun, items: Sequence[Item], recorded: dict[str, store.FileStat]
) -> list[Item]:
    """The image items to read: those the stat cache does not vouch for. A vouched file is
    counted (present or alias) unread; the others' stats are noted before the read."""
    left = []
    for item in items:
        now = file_stat(item.path or "")
        item_id = recorded_id(recorded, item.uri, now, run.known_ids)
        if item_id is not None:
            run.is_new(item_id, item.uri, (), item.meta)
            run.file_stats[item.uri] = recorded[item.uri]
            continue
        if now is not None:
            run.pending_stats[item.uri] = now
        left.append(item)
    return left


def _finish(
    config: EmbedConfig,
    run: _EmbedRun,
    world: distributed.World,
    encoder: Any,
    ignored: int,
    seconds: float,
) -> EmbedResult:
    """Combine the ranks' counts; the main rank writes failures and aliases."""
    shares = distributed.gather(
        world, (run.embedded, run.failures, run.truncated, run.replaced, run.shards.written)
    )
    failures = tuple(sorted(f for share in shares for f in share[1]))
    pruned, linked = store.Pruned(0, 0), 0
    if world.is_main:  # every rank's shards are written: gather waited for them
        store.write_failures(config.out_dir, failures)
        if config.prune:
            pruned = _prune(config, run, failures)
        elif run.aliases:
            store.add_aliases(config.out_dir, run.aliases)
        linked = store.fill_meta(config.out_dir, run.meta_of) if run.meta_of else 0
    distributed.barrier(world)
    return EmbedResult(
        out_dir=config.out_dir,
        model=encoder.spec,
        fingerprint=encoder.fingerprint,
        embedded=sum(share[0] for share in shares),
        already_present=run.already_present,
        aliases=len(run.aliases),
        failures=failures,
        truncated_texts=sum(share[2] for share in shares),
        replaced_texts=sum(share[3] for share in shares),
        ignored_files=ignored,
        shards_written=sum(share[4] for share in shares),
        seconds=seconds,
        device=f"{encoder.device.value} ({encoder.device.reason})",
        is_main=world.is_main,
        changed=run.changed,
        pruned=pruned.rows_removed,
        moved=pruned.rows_moved,
        filled=linked,
    )


def _prune(
    config: EmbedConfig, run: _EmbedRun, failures: Sequence[tuple[str, str, str]]
) -> store.Pruned:
    """Drop what the sources no longer hold. An input that failed to read or decode this time
    keeps its rows: it may be a passing fault (a network share), and nothing is known of it."""
    current = dict(run.current)
    for uri, _, _ in failures:
        if uri not in current and uri in run.known_uris:
            current[uri] = run.known_uris[uri]
    # A .tar shard that could not be listed keeps the rows of all its members.
    shards = tuple(uri + MEMBER_SEPARATOR for uri, _, _ in failures if uri.endswith(TAR_SUFFIX))
    if shards:
        current.update(
            {
                uri: item_id
                for uri, item_id in run.known_uris.items()
                if uri.startswith(shards) and uri not in current
            }
        )
    kinds = ("image", "text") if config.kind is Kind.AUTO else (config.kind.value,)
    return store.prune(config.out_dir, current, kinds)


def _start_run(
    config: EmbedConfig,
    encoder: Any,
    items: Sequence[Item],
    world: distributed.World,
    base: str,
) -> _EmbedRun:
    if world.is_main:  # the folder exists: writer_lock made it
        remove_stale_temporaries(config.out_dir)  # shards a killed run was writing
    distributed.barrier(world)
    existing = store.read_existing(config.out_dir)
    distributed.barrier(world)  # no rank writes a shard before every rank has read the folder
    if existing.stamp is not None and existing.stamp.fingerprint != encoder.fingerprint:
        raise InputError(
            f"{config.out_dir} holds embeddings from another model: {existing.stamp.spec} "
            f"(fingerprint {existing.stamp.fingerprint}), not {encoder.spec} "
            f"(fingerprint {encoder.fingerprint}).",
            f"Use a new output folder, or -m {existing.stamp.spec} to add to this one.",
        )
    meta_names = sorted({name for item in items for name in item.meta or ()})
    shards = ShardWriter(
        out_dir=config.out_dir,
        stamp=store.ModelStamp(encoder.spec, encoder.fingerprint, encoder.embed_dim),
        # Ranks number their shards base + rank, base + rank + world, ...: never the same file.
        next_shard=max(existing.shard_numbers, default=-1) + 1 + world.rank,
        shard_step=world.size,
        shard_rows=max(1, config.shard_rows),
        float16=config.precision == "fp16",
        meta_columns=[column_name(name) for name in meta_names],
        base=base,
    )
    return _EmbedRun(
        encoder=encoder, known_ids=existing.ids, known_uris=existing.uris, shards=shards
    )


def _embed_texts(
    run: _EmbedRun, items: Sequence[Item], batch_size: int, report: ProgressCallback
) -> None:
    if items:
        report(ProgressReport("texts", 0, len(items)))
    for start in range(0, len(items), batch_size):
        batch: list[Item] = []
        ids: list[str] = []
        texts: list[str] = []
        for item in items[start : start + batch_size]:
            try:
                text, replaced = _read_text(item)
            except DecodeError as error:
                run.failures.append((item.uri, error.stage, error.reason))
                continue
            item_id = text_id(text)
            if not run.is_new(item_id, item.uri, ids, item.meta):
                continue
            run.replaced += replaced
            batch.append(item)
            ids.append(item_id)
            texts.append(text)
        if batch:
            run.truncated += sum(run.encoder.truncated(texts))
            run.add(batch, ids, texts, run.encoder.encode_texts(texts))
        report(ProgressReport("texts", min(start + batch_size, len(items)), len(items)))


def _read_text(item: Item) -> tuple[str, bool]:
    if item.text is not None:
        return decode_text(item.text.encode("utf-8"))
    return decode_text(read_bytes(item.path or ""))


def _embed_images(
    run: _EmbedRun,
    items: Sequence[Item],
    config: EmbedConfig,
    workers: int,
    report: ProgressCallback,
) -> None:
    if not items:
        return
    dataset = ImageDataset(
        items,
        known_ids=frozenset(run.known_ids),
        preprocess=run.encoder.prepare_image,
        min_side=min(run.encoder.image_size),
        max_pixels=config.max_pixels,
        skip_repeats=True,
    )
    done = 0
    report(ProgressReport("images", 0, len(items)))
    batches = image_batches(
        dataset, config.batch_size, workers, run.encoder.device.value, run.encoder.runtime
    )
    for batch in batches:
        fresh_items: list[Item] = []
        fresh_ids: list[str] = []
        keep: list[int] = []
        for position, sample in enumerate(batch.samples):
            item = items[sample.index]
            if sample.error is not None:
                run.failures.append((item.uri, sample.error[0], sample.error[1]))
                continue
            stat = run.pending_stats.pop(item.uri, None)
            if stat is not None:
                run.file_stats[item.uri] = (*stat, sample.item_id)
            if (
                position not in batch.pixel_row
                and sample.item_id not in run.known_ids
                and sample.item_id not in fresh_ids
            ):
                # A worker passed over this copy, and its first copy got no row: the same
                # content gave a non-finite embedding.
                run.failures.append((item.uri, "encode", NON_FINITE))
                continue
            if run.is_new(sample.item_id, item.uri, fresh_ids, item.meta):
                fresh_items.append(item)
                fresh_ids.append(sample.item_id)
                keep.append(position)
        if fresh_items:
            assert batch.pixels is not None  # fresh items were decoded
            pixels = batch.pixels[[batch.pixel_row[p] for p in keep]]
            run.add(
                fresh_items, fresh_ids, [None] * len(fresh_items), run.encoder.encode_images(pixels)
            )
        done += len(batch.samples)
        report(ProgressReport("images", done, len(items)))


__all__ = ["EmbedConfig", "EmbedResult", "content_id", "embed"]
