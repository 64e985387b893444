"""Splitting an embed run across torchrun ranks (or a Ray run's units) so that it equals a
single-process run, and the ledger of what a run found (``Ledger``).

Every rank sees the same sorted inputs. Each rank hashes its slice of the images (except the
files that the stat cache vouches for; texts are hashed by every rank, cheaply), the ids are
gathered, and every rank then walks the full list in the same order to decide what a single
process would have done: the first uri of each new content id is embedded, by the rank whose
slice holds it; later uris of the same content are aliases; content already in the output
folder is already present. Rank 0 records the aliases, the already-present count and the stat
cache, so nothing is counted twice.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from clipkit.embed.shards import StoredMeta
from clipkit.infra import distributed
from clipkit.inputs.decode import DecodeError, decode_text, text_id
from clipkit.inputs.files import read_bytes
from clipkit.inputs.pipeline import hash_files
from clipkit.inputs.sources import Item
from clipkit.inputs.stat_cache import file_stat, recorded_id
from clipkit.store import FileStat


@dataclass(kw_only=True)
class Ledger:
    """What a run knows of each content id and uri, and what it counted, as it walks the
    inputs in order (one process, or the driver of a Ray run)."""

    known_ids: set[str]
    known_uris: dict[str, str]  # uri -> content id, as recorded in the folder (and this run)
    current: dict[str, str] = field(default_factory=dict)  # uri -> content id found this run
    file_stats: dict[str, FileStat] = field(default_factory=dict)  # files read this run
    pending_stats: dict[str, tuple[int, int]] = field(default_factory=dict)  # before the read
    changed: int = 0
    already_present: int = 0
    aliases: list[tuple[str, str]] = field(default_factory=list)
    failures: list[tuple[str, str, str]] = field(default_factory=list)
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


def image_ids(
    items: Sequence[Item],
    world: distributed.World,
    workers: int,
    recorded: Mapping[str, FileStat],
    known_ids: Collection[str],
) -> tuple[list[str | None], dict[str, FileStat]]:
    """Content ids of all image items, and the stat cache entries of the files behind them.

    This rank hashes its slice, except files the stat cache vouches for; then the ranks share.
    """
    mine = list(range(world.rank, len(items), world.size))
    stats = [file_stat(items[i].path or "") for i in mine]  # before any read
    ids = [
        recorded_id(recorded, items[i].uri, now, known_ids)
        for i, now in zip(mine, stats, strict=True)
    ]
    unread = [n for n, item_id in enumerate(ids) if item_id is None]
    hashed = hash_files([items[mine[n]].path or "" for n in unread], workers)
    for n, item_id in zip(unread, hashed, strict=True):
        ids[n] = item_id
    merged: list[str | None] = [None] * len(items)
    entries: dict[str, FileStat] = {}
    for indices, share_ids, share_stats in distributed.gather(world, (mine, ids, stats)):
        for index, item_id, now in zip(indices, share_ids, share_stats, strict=True):
            merged[index] = item_id
            if item_id is not None and now is not None:
                entries[items[index].uri] = (*now, item_id)
    return merged, entries


def text_ids(items: Sequence[Item]) -> list[str | None]:
    """Content ids of all text items (None where the text is empty or unreadable)."""
    ids: list[str | None] = []
    for item in items:
        try:
            raw = (
                item.text.encode("utf-8") if item.text is not None else read_bytes(item.path or "")
            )
            ids.append(text_id(decode_text(raw)[0]))
        except DecodeError:
            ids.append(None)
    return ids


def claim(
    ledger: Ledger, world: distributed.World, items: Sequence[Item], ids: Sequence[str | None]
) -> list[Item]:
    """The items this rank must embed (or report as failures), in input order."""
    mine: list[Item] = []
    claimed: set[str] = set()
    for index, (item, item_id) in enumerate(zip(items, ids, strict=True)):
        owner = index % world.size == world.rank
        if item_id is not None and world.is_main:
            ledger.note(item_id, item.uri)  # what the folder will mirror under --prune
        if item_id is None:  # unreadable: its owner reads it again and records why
            if owner:
                mine.append(item)
        elif item_id in ledger.known_ids:
            if world.is_main:
                ledger.seen(item_id, item.uri, item.meta)
        elif item_id in claimed:
            if world.is_main:
                ledger.aliases.append((item_id, item.uri))
        else:
            claimed.add(item_id)
            if owner:
                mine.append(item)
    return mine
