"""``clipkit embed``: images and texts to Parquet embedding shards, resumable and incremental.

Worker processes read, hash, decode and preprocess images while the model encodes the previous
batch. An item whose content id is already in the output folder is not decoded again; identical
content found under another path is recorded as an alias instead of a second row.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

from clipkit import store
from clipkit.embed import plan as embed_plan
from clipkit.embed import steps
from clipkit.embed.config import EmbedConfig, EmbedResult
from clipkit.embed.shards import ShardWriter, column_name
from clipkit.errors import SkippedInputsError, UsageError
from clipkit.infra import distributed
from clipkit.infra.atomic import remove_stale_temporaries
from clipkit.infra.locks import writer_lock
from clipkit.infra.progress import ProgressCallback, no_progress
from clipkit.inputs.decode import content_id
from clipkit.inputs.filenames import as_text
from clipkit.inputs.pipeline import default_workers
from clipkit.inputs.sources import Item
from clipkit.inputs.stat_cache import file_stat, recorded_id
from clipkit.models.runtime import load_encoder
from clipkit.models.specs import ModelSpec, parse_spec


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
    if config.engine == "ray":
        from clipkit.embed.on_ray import embed_on_ray

        return _strictly(config, embed_on_ray(config, spec, progress or no_progress))
    world = distributed.current_world()
    device, owns_group = distributed.start(world, config.device)
    try:
        shown = (progress or no_progress) if world.is_main else no_progress
        result = _embed(config, spec, world, device, shown)
        return _strictly(config, result) if world.is_main else result
    finally:
        if owns_group:
            distributed.finish(world)


def _strictly(config: EmbedConfig, result: EmbedResult) -> EmbedResult:
    """``result``, unless ``--strict`` and inputs were skipped: SkippedInputsError then."""
    if config.strict and result.skipped:
        listed_in = str(config.out_dir / store.FAILURES_FILE)
        raise SkippedInputsError(result.skipped, listed_in, result)
    return result


def _embed(
    config: EmbedConfig,
    spec: ModelSpec,
    world: distributed.World,
    device: str,
    report: ProgressCallback,
) -> EmbedResult:
    started = time.perf_counter()
    frame = steps.uri_frame(config.out_dir, config.base)
    found = steps.find_inputs(config, frame)
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
            steps.embed_texts(run, texts, config.batch_size, report)
            steps.embed_images(run, images, config, workers, report)
        except KeyboardInterrupt:
            run.shards.flush()  # keep every finished embedding: the next run resumes after them
            steps.save_file_stats(config, run, world, recorded)
            raise
        run.shards.flush()
        steps.save_file_stats(config, run, world, recorded)
        result = _finish(config, run, world, encoder, found.ignored, time.perf_counter() - started)
        return dataclasses.replace(result, runtime=runtime)


def _skip_unchanged(
    run: steps.EmbedRun, items: Sequence[Item], recorded: dict[str, store.FileStat]
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
    run: steps.EmbedRun,
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
            pruned = steps.prune_folder(config, run, failures)
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


def _start_run(
    config: EmbedConfig,
    encoder: Any,
    items: Sequence[Item],
    world: distributed.World,
    base: str,
) -> steps.EmbedRun:
    if world.is_main:  # the folder exists: writer_lock made it
        remove_stale_temporaries(config.out_dir)  # shards a killed run was writing
    distributed.barrier(world)
    existing = store.read_existing(config.out_dir)
    distributed.barrier(world)  # no rank writes a shard before every rank has read the folder
    steps.check_same_model(config, existing.stamp, encoder.spec, encoder.fingerprint)
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
    return steps.EmbedRun(
        encoder=encoder, known_ids=existing.ids, known_uris=existing.uris, shards=shards
    )


__all__ = ["EmbedConfig", "EmbedResult", "content_id", "embed"]
