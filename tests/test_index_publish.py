"""An index's three files are replaced as one: a reader loading during an update waits and
then sees the new set whole; a writer killed between its renames leaves a set that the next
reader completes or recognises as whole by the recorded checksums; a set that is truly mixed
is refused by name until a rebuild, never read as if its vectors and row map belonged
together; damaged vectors are refused, never searched."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

from clipkit import store
from clipkit.errors import ClipkitError
from clipkit.index.build import INDEX_FILE, ROWS_FILE, IndexConfig, build_index, load_index
from clipkit.infra.locks import PUBLISH_FILE, HalfPublished
from tests.helpers import TINY

DIM, ROWS = 16, 40


def _embeddings(folder, ids: list[str], vectors: dict[str, np.ndarray]) -> None:
    """One shard holding ``ids`` (rewritten in place, as ``embed --prune`` does)."""
    stamp = store.ModelStamp(TINY, "fingerprint-of-a-test", DIM)
    block = np.stack([vectors[i] for i in ids]).astype(np.float32)
    store.write_shard(
        store.shard_path(folder, 0),
        {
            "id": ids,
            "uri": [f"/{i}.jpg" for i in ids],
            "kind": ["image"] * len(ids),
            "text": [None] * len(ids),
        },
        block,
        stamp,
    )


@pytest.fixture()
def changed_folder(tmp_path):
    """An exact index of 40 rows, then the embeddings lose row 3 and gain a new one.

    The update keeps the count (one dropped, one added) while every row from 3 on moves:
    the old row map beside the new vectors would name the wrong file for most hits.
    """
    rng = np.random.default_rng(0)
    ids = [f"{n:04x}" for n in range(ROWS + 1)]
    vectors = {
        i: v / np.linalg.norm(v)
        for i, v in zip(ids, rng.standard_normal((ROWS + 1, DIM)), strict=True)
    }
    emb, idx = tmp_path / "emb", tmp_path / "idx"
    _embeddings(emb, ids[:ROWS], vectors)
    build_index(IndexConfig(emb_dir=emb, out_dir=idx))
    _embeddings(emb, ids[:3] + ids[4:], vectors)
    return emb, idx, vectors


def _assert_rows_match_vectors(loaded, vectors) -> None:
    for row, item_id in enumerate(loaded.rows.column("id")):
        np.testing.assert_allclose(loaded.vectors[row], vectors[item_id], atol=1e-6)
        assert loaded.rows.column("uri")[row] == f"/{item_id}.jpg"


def _pause_after_replacing(name: str, monkeypatch) -> tuple[threading.Event, threading.Event]:
    """Make the writer stop after renaming ``name`` until ``go`` is set."""
    replaced, go = threading.Event(), threading.Event()
    real_replace = os.replace

    def replace(source, target):
        real_replace(source, target)
        if os.path.basename(target) == name:
            replaced.set()
            assert go.wait(30)

    monkeypatch.setattr(os, "replace", replace)
    return replaced, go


def test_a_reader_during_an_update_waits_and_sees_the_new_set_whole(changed_folder, monkeypatch):
    emb, idx, vectors = changed_folder
    replaced, go = _pause_after_replacing("index.faiss", monkeypatch)
    update = IndexConfig(emb_dir=emb, out_dir=idx, update=True)
    writer = threading.Thread(target=build_index, args=(update,))
    writer.start()
    assert replaced.wait(30)  # new vectors in place, old row map and sidecar still there
    loaded, failed = [], []

    def read() -> None:
        try:
            loaded.append(load_index(idx))  # checks the source too, as `clipkit search` does
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            failed.append(error)

    reader = threading.Thread(target=read)
    reader.start()
    reader.join(1.0)
    assert reader.is_alive()  # waiting for the writer's renames, not reading a mixed set
    go.set()
    writer.join(30)
    reader.join(30)
    assert not failed and len(loaded) == 1
    assert loaded[0].info.rows == ROWS and "0003" not in loaded[0].rows.column("id")
    _assert_rows_match_vectors(loaded[0], vectors)


def test_a_set_left_half_replaced_is_refused_until_a_rebuild(changed_folder, monkeypatch):
    emb, idx, vectors = changed_folder
    real_replace = os.replace

    def crash_before_the_row_map(source, target):
        if os.path.basename(target) == ROWS_FILE:
            raise KeyboardInterrupt  # SIGTERM or Ctrl-C between two renames
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", crash_before_the_row_map)
    with pytest.raises(KeyboardInterrupt):
        build_index(IndexConfig(emb_dir=emb, out_dir=idx, update=True))
    monkeypatch.setattr(os, "replace", real_replace)
    update = IndexConfig(emb_dir=emb, out_dir=idx, update=True)
    for attempt in (lambda: load_index(idx), lambda: build_index(update)):
        with pytest.raises(HalfPublished, match="being replaced when its writer stopped") as error:
            attempt()
        assert "Rebuild it: clipkit index" in error.value.hint
    assert not [p for p in idx.iterdir() if p.name.endswith(".tmp")]  # staged files cleaned up
    build_index(IndexConfig(emb_dir=emb, out_dir=idx))
    loaded = load_index(idx)
    assert loaded.info.rows == ROWS and (idx / PUBLISH_FILE).read_text() == ""
    _assert_rows_match_vectors(loaded, vectors)


def test_a_publish_that_fails_before_its_first_rename_leaves_the_old_set_readable(
    changed_folder, monkeypatch
):
    emb, idx, _ = changed_folder
    before = load_index(idx, check_source=False)
    real_replace = os.replace

    def full_disk(source, target):
        if os.path.basename(target) == INDEX_FILE:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(ClipkitError, match="No space left on device"):
        build_index(IndexConfig(emb_dir=emb, out_dir=idx, update=True))
    monkeypatch.setattr(os, "replace", real_replace)
    # Nothing was replaced: the old set is whole, so it loads (stale, as it was), and updates.
    assert (idx / PUBLISH_FILE).read_text() == ""
    kept = load_index(idx, check_source=False)
    assert kept.rows.to_lists() == before.rows.to_lists() and kept.info == before.info
    assert not [p for p in idx.iterdir() if p.name.endswith(".tmp")]
    build_index(IndexConfig(emb_dir=emb, out_dir=idx, update=True))
    assert load_index(idx).info.rows == ROWS


def test_an_index_without_the_publish_file_still_loads(changed_folder):
    emb, idx, vectors = changed_folder
    build_index(IndexConfig(emb_dir=emb, out_dir=idx, update=True))
    (idx / PUBLISH_FILE).unlink()  # as written by clipkit before the file existed
    loaded = load_index(idx)
    _assert_rows_match_vectors(loaded, vectors)


@pytest.mark.e2e
@pytest.mark.parametrize("renamed", [0, 1, 2, 3])
def test_a_writer_killed_inside_the_publish_window_leaves_a_whole_set(
    changed_folder, tmp_path, renamed
):
    """#24 D4: `kill -9` of `index --update` after RENAMED of its three renames (3: before it
    clears the marker). The index used to be refused until a full rebuild even where its files
    were the old set, byte for byte; now it is the old set (0) or the new one, whole."""
    emb, idx, vectors = changed_folder
    before = load_index(idx, check_source=False).rows.column("id")
    code = f"""
import os, signal
from pathlib import Path
from clipkit.index.build import IndexConfig, build_index
from clipkit.infra import locks
real_replace, done = os.replace, []
def replace(source, target):
    if len(done) == {renamed}:
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(source, target)
    done.append(target)
os.replace = replace
if {renamed} == 3:  # after the last rename, before the marker is cleared
    real_mark = locks._mark
    locks._mark = lambda handle, text: real_mark(handle, text) if text else None
    os.replace = real_replace
build_index(IndexConfig(emb_dir=Path({str(emb)!r}), out_dir=Path({str(idx)!r}), update=True))
if {renamed} == 3:
    os.kill(os.getpid(), signal.SIGKILL)
"""
    killed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (idx / PUBLISH_FILE).read_text().startswith("publishing")
    staged = [p for p in idx.iterdir() if p.name.endswith(".tmp")]
    assert len(staged) == 3 - renamed
    loaded = load_index(idx, check_source=False)  # completed or recognised, not refused
    assert (idx / PUBLISH_FILE).read_text() == ""
    _assert_rows_match_vectors(loaded, vectors)
    if renamed == 0:
        assert loaded.rows.column("id") == before  # the old set, whole
    else:
        assert "0003" not in loaded.rows.column("id") and loaded.info.rows == ROWS
    build_index(IndexConfig(emb_dir=emb, out_dir=idx, update=True))
    assert not [p for p in idx.iterdir() if p.name.endswith(".tmp")]  # #24 D9: cleaned
    _assert_rows_match_vectors(load_index(idx), vectors)


def test_a_flipped_byte_in_the_vectors_is_refused(changed_folder):
    """#24 D3: a byte flipped in index.faiss's vector data gave cosine scores of 3.09."""
    _, idx, _ = changed_folder
    data = bytearray((idx / INDEX_FILE).read_bytes())
    data[-4 * DIM + 3] ^= 0x40  # the exponent of the last row's first value
    (idx / INDEX_FILE).write_bytes(bytes(data))
    with pytest.raises(ClipkitError, match="index.faiss is damaged: its checksum is not"):
        load_index(idx, check_source=False)
    # An index made before the checksums were recorded: its scores give it away.
    sidecar = json.loads((idx / "index.json").read_text())
    (idx / "index.json").write_text(json.dumps({**sidecar, "files": {}}))
    loaded = load_index(idx, check_source=False)
    damaged = loaded.vectors[-1, 0]
    assert abs(damaged) > 2
    query = np.sign(damaged) * np.eye(DIM, dtype=np.float32)[:1]  # towards the damaged value
    with pytest.raises(ClipkitError, match="gave a score of .*which unit vectors cannot have"):
        loaded.search(query, 5)
