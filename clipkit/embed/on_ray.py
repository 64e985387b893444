"""``clipkit embed --engine ray``: the driver plans as a local run does; Ray actors embed.

The driver (this process) lists the inputs, reads what the output folder holds, takes every
input's content id (hashing, on this machine's cores, the files the stat cache does not vouch
for) and walks them in input order as one process would (:mod:`clipkit.embed.plan`): content
already in the folder is counted, a second uri of one content is an alias, and what is new is
cut into units of ``--shard-rows`` inputs, texts first, then images: each unit is the shard a
local run would write under the same number. Each actor of the pool loads the model once and
embeds units, writing each one's shard atomically; a unit that fails (its code, its process,
its node) is given again, and its shard, written whole or not at all, appears once. The
driver writes what sums the units up (failures, aliases, the stat cache) when they are in.

Stopped and run again, the folder holds the finished units' shards: their content is known,
so only the rest is planned again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from clipkit import store
from clipkit.embed import plan, steps
from clipkit.embed.config import EmbedConfig, EmbedResult
from clipkit.embed.shards import ShardWriter, column_name
from clipkit.engine import cluster
from clipkit.infra.atomic import remove_stale_temporaries
from clipkit.infra.distributed import World
from clipkit.infra.locks import writer_lock
from clipkit.infra.progress import ProgressCallback, ProgressReport, no_progress
from clipkit.inputs.filenames import as_text
from clipkit.inputs.pipeline import default_workers
from clipkit.inputs.sources import Item
from clipkit.models.runtime import RuntimeChoice, load_encoder
from clipkit.models.specs import ModelSpec, parse_spec

GPU_DECODE_WORKERS = 4  # decode processes of an actor with a GPU (a CPU actor decodes itself)


@dataclass(frozen=True)
class Unit:
    """Inputs whose rows make shard ``number``."""

    number: int
    items: tuple[Item, ...]


@dataclass(frozen=True)
class Identity:
    """The model an actor loaded, as the folder's stamp and the result report it."""

    spec: str
    fingerprint: str
    dim: int
    device: str
    runtime: RuntimeChoice


@dataclass
class UnitDone:
    """What one unit did."""

    embedded: int = 0
    shards: int = 0
    truncated: int = 0
    replaced: int = 0
    failures: list[tuple[str, str, str]] = field(default_factory=list)
    node: str = ""  # the Ray node that ran it


class UnitEmbedder:
    """A Ray actor's work: the model loaded once, then one shard per unit."""

    def __init__(self, config: EmbedConfig, meta_columns: list[str], base: str) -> None:
        self.config = config
        self.meta_columns = meta_columns
        self.base = base
        self.encoder, self.runtime = load_encoder(
            parse_spec(config.model), device=config.device, runtime=config.runtime, bulk=True
        )
        on_gpu = self.encoder.device.value.startswith("cuda")
        self.decode_workers = (
            config.workers if config.workers is not None else GPU_DECODE_WORKERS * on_gpu
        )

    def identity(self) -> Identity:
        encoder = self.encoder
        return Identity(
            encoder.spec,
            encoder.fingerprint,
            encoder.embed_dim,
            f"{encoder.device.value} ({encoder.device.reason})",
            self.runtime,
        )

    def run(self, unit: Unit) -> UnitDone:
        encoder = self.encoder
        writer = ShardWriter(
            out_dir=self.config.out_dir,
            stamp=store.ModelStamp(encoder.spec, encoder.fingerprint, encoder.embed_dim),
            next_shard=unit.number,
            shard_step=1,
            shard_rows=len(unit.items),  # one shard: the unit's rows
            float16=self.config.precision == "fp16",
            meta_columns=self.meta_columns,
            base=self.base,
        )
        work = steps.EmbedRun(encoder=encoder, known_ids=set(), known_uris={}, shards=writer)
        texts = [item for item in unit.items if item.kind == "text"]
        images = [item for item in unit.items if item.kind == "image"]
        steps.embed_texts(work, texts, self.config.batch_size, no_progress)
        steps.embed_images(work, images, self.config, self.decode_workers, no_progress)
        writer.flush()
        return UnitDone(work.embedded, writer.written, work.truncated, work.replaced,
                        work.failures, cluster.node_id())  # fmt: skip


def embed_on_ray(config: EmbedConfig, spec: ModelSpec, report: ProgressCallback) -> EmbedResult:
    """``embed`` with ``--engine ray`` (see the module's docstring).

    Raises:
        InputError: bad sources, or an output folder made by a different model.
        UsageError: no Ray, an unreachable cluster, or GPUs asked of a cluster without.
        UnitFailed: units that failed every try (the others' shards are kept).
    """
    started = time.perf_counter()
    frame = steps.uri_frame(config.out_dir, config.base)
    found = steps.find_inputs(config, frame)
    world = World()  # the driver plans as one process does
    with (
        cluster.connected(config.ray_address) as reached,
        writer_lock(config.out_dir, f"embed --engine ray -o {config.out_dir}"),
    ):
        remove_stale_temporaries(config.out_dir)  # shards a killed run was writing
        existing = store.read_existing(config.out_dir)
        ledger = plan.Ledger(known_ids=existing.ids, known_uris=existing.uris)
        ledger.failures.extend(found.failures)
        recorded = store.read_file_stats(config.out_dir)
        trusted = {} if config.rehash else recorded
        texts = [item for item in found.items if item.kind == "text"]
        images = [item for item in found.items if item.kind == "image"]
        texts = plan.claim(ledger, world, texts, plan.text_ids(texts))
        hashers = config.workers if config.workers is not None else default_workers()
        ids, ledger.file_stats = plan.image_ids(images, world, hashers, trusted, ledger.known_ids)
        images = plan.claim(ledger, world, images, ids)
        new = [*texts, *images]
        first = max(existing.shard_numbers, default=-1) + 1
        rows = max(1, config.shard_rows)
        units = [
            Unit(first + n, tuple(new[start : start + rows]))
            for n, start in enumerate(range(0, len(new), rows))
        ]
        meta_names = sorted({name for item in found.items for name in item.meta or ()})
        arguments = (config, [column_name(name) for name in meta_names], as_text(frame.base))
        pool = cluster.size_pool(reached, config.gpus_per_worker, len(units))
        totals = UnitDone()
        nodes: set[str] = set()
        with cluster.actors(UnitEmbedder, arguments, pool) as actors:
            identity: Identity = actors.ask("identity")
            steps.check_same_model(config, existing.stamp, identity.spec, identity.fingerprint)
            done_items = [0]
            report(ProgressReport("inputs", 0, len(new)))

            def finished(position: int, done: UnitDone) -> None:
                totals.embedded += done.embedded
                totals.shards += done.shards
                totals.truncated += done.truncated
                totals.replaced += done.replaced
                totals.failures.extend(done.failures)
                nodes.add(done.node)
                for uri, _, _ in done.failures:  # as a local run: the stat cache vouches for
                    ledger.file_stats.pop(uri, None)  # what was embedded, not what failed
                done_items[0] += len(units[position].items)
                report(ProgressReport("inputs", done_items[0], len(new)))

            try:
                actors.run_units(units, finished)
            finally:  # what finished is recorded, whatever stopped the rest
                ledger.failures.extend(totals.failures)
                steps.save_file_stats(config, ledger, world, recorded)
        remove_stale_temporaries(config.out_dir)  # what actors that died mid-write left
        failures = tuple(sorted(ledger.failures))
        store.write_failures(config.out_dir, failures)
        pruned = store.Pruned(0, 0)
        if config.prune:
            pruned = steps.prune_folder(config, ledger, failures)
        elif ledger.aliases:
            store.add_aliases(config.out_dir, ledger.aliases)
        filled = store.fill_meta(config.out_dir, ledger.meta_of) if ledger.meta_of else 0
    return EmbedResult(
        out_dir=config.out_dir,
        model=identity.spec,
        fingerprint=identity.fingerprint,
        embedded=totals.embedded,
        already_present=ledger.already_present,
        aliases=len(ledger.aliases),
        failures=failures,
        truncated_texts=totals.truncated,
        replaced_texts=totals.replaced,
        ignored_files=found.ignored,
        shards_written=totals.shards,
        seconds=time.perf_counter() - started,
        device=f"{identity.device} on {pool.workers} Ray actor(s), {len(nodes)} node(s)",
        changed=ledger.changed,
        pruned=pruned.rows_removed,
        moved=pruned.rows_moved,
        filled=filled,
        runtime=identity.runtime,
        engine="ray",
    )
