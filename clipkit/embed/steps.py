"""The steps of an embed run that both engines take: the run's state (what is known, buffered,
counted), embedding texts and images into its shards, the stat cache, ``--prune``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipkit import store
from clipkit.embed import plan as embed_plan
from clipkit.embed.config import EmbedConfig
from clipkit.embed.shards import ShardWriter
from clipkit.errors import InputError
from clipkit.infra import distributed
from clipkit.infra.progress import ProgressCallback, ProgressReport
from clipkit.inputs.decode import DecodeError, decode_text, text_id
from clipkit.inputs.filenames import UriFrame, os_path
from clipkit.inputs.files import read_bytes
from clipkit.inputs.pipeline import ImageDataset, image_batches
from clipkit.inputs.sources import Discovery, Item, Kind, SourceOptions, discover
from clipkit.inputs.tarshards import MEMBER_SEPARATOR, TAR_SUFFIX
from clipkit.score.arrays import as_numpy

NON_FINITE = "the model returned a non-finite embedding (NaN or inf): are its weights corrupt?"


@dataclass(kw_only=True)
class EmbedRun(embed_plan.Ledger):
    """Mutable state of one run: the ledger, what is buffered, what was counted."""

    encoder: Any  # either runtime's: a torch Encoder or an OnnxEncoder
    shards: ShardWriter
    embedded: int = 0
    truncated: int = 0
    replaced: int = 0

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


def find_inputs(config: EmbedConfig, frame: UriFrame) -> Discovery:
    """What ``config.sources`` hold, named relative to ``frame``."""
    options = SourceOptions(config.kind, config.lines, config.include_hidden,
                            config.image_column, config.text_column, frame)  # fmt: skip
    return discover(config.sources, options)


def check_same_model(config: EmbedConfig, stamp: store.ModelStamp | None, spec: str,
                     fingerprint: str) -> None:  # fmt: skip
    """Raise InputError if the output folder holds embeddings of another model than
    ``spec`` (``fingerprint``): rows of two models cannot share one index."""
    if stamp is not None and stamp.fingerprint != fingerprint:
        raise InputError(
            f"{config.out_dir} holds embeddings from another model: {stamp.spec} "
            f"(fingerprint {stamp.fingerprint}), not {spec} (fingerprint {fingerprint}).",
            f"Use a new output folder, or -m {stamp.spec} to add to this one.",
        )


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


def save_file_stats(
    config: EmbedConfig,
    run: embed_plan.Ledger,
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


def prune_folder(
    config: EmbedConfig, run: embed_plan.Ledger, failures: Sequence[tuple[str, str, str]]
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


def embed_texts(
    run: EmbedRun, items: Sequence[Item], batch_size: int, report: ProgressCallback
) -> None:
    if items:
        report(ProgressReport("texts", 0, len(items)))
    for start in range(0, len(items), batch_size):
        batch: list[Item] = []
        ids: list[str] = []
        texts: list[str] = []
        for item in items[start : start + batch_size]:
            try:
                text, replaced = read_text(item)
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


def read_text(item: Item) -> tuple[str, bool]:
    if item.text is not None:
        return decode_text(item.text.encode("utf-8"))
    return decode_text(read_bytes(item.path or ""))


def embed_images(
    run: EmbedRun,
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
