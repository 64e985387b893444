"""Reading an embeddings folder: a command that reads it in several passes reads one snapshot
of its shards (an `embed` writing meanwhile cannot pair rows with the wrong vectors); a shard
rewritten or removed under a reader, a damaged shard and shards of two models are each refused
by name with a remedy, in every command that reads the folder."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from clipkit import cli, store
from clipkit.errors import InputError
from clipkit.index import IndexConfig, build_index, load_index
from clipkit.index import build as index
from tests.helpers import TINY

DIM = 16
runner = CliRunner()


def _write(
    folder, number: int, first: int, rows: int, fingerprint: str = "fp-a", dim: int = DIM
) -> np.ndarray:
    rng = np.random.default_rng(number)
    vectors = rng.standard_normal((rows, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"{n:08x}" for n in range(first, first + rows)]
    columns = {
        "id": ids,
        "uri": [f"/{i}.jpg" for i in ids],
        "kind": ["image"] * rows,
        "text": [None] * rows,
    }
    stamp = store.ModelStamp(TINY, fingerprint, dim)
    store.write_shard(store.shard_path(folder, number), columns, vectors, stamp)
    return vectors


def test_a_shard_rewritten_or_removed_under_a_reader_is_refused(tmp_path):
    _write(tmp_path, 0, 0, 5)
    _write(tmp_path, 1, 5, 5)
    shards = store.snapshot(tmp_path)
    assert [s.path.name for s in shards] == ["part-00000.parquet", "part-00001.parquet"]
    _write(tmp_path, 2, 10, 5)  # added after the snapshot: not read
    assert len(store.read_vectors(shards).ids) == 10
    _write(tmp_path, 1, 5, 4)  # rewritten, as `embed --prune` does
    with pytest.raises(InputError, match="changed while they were being read") as error:
        store.read_vectors(shards)
    assert "part-00001.parquet was rewritten or removed" in str(error.value)
    shards = store.snapshot(tmp_path)
    store.shard_path(tmp_path, 0).unlink()
    with pytest.raises(InputError, match="changed while they were being read"):
        list(store.iter_embeddings(shards, ("id",)))


def test_an_index_built_while_embed_adds_a_shard_is_whole_and_stale(tmp_path, monkeypatch):
    """A shard written between the row scan and the adding pass used to add vectors without
    rows (a broken index), and the recorded source then named it (a stale index unnoticed)."""
    emb = tmp_path / "emb"
    vectors = np.concatenate([_write(emb, 0, 0, 6), _write(emb, 1, 6, 6)])
    real_new_index = index.new_index

    def embed_writes_meanwhile(*args):
        _write(emb, 2, 12, 6)
        return real_new_index(*args)

    monkeypatch.setattr(index, "new_index", embed_writes_meanwhile)
    built = build_index(IndexConfig(emb_dir=emb, out_dir=tmp_path / "idx"))
    assert built.info.rows == 12 and [s["name"] for s in built.info.shards] == [
        "part-00000.parquet",
        "part-00001.parquet",
    ]
    loaded = load_index(tmp_path / "idx", check_source=False)
    np.testing.assert_allclose(loaded.vectors, vectors, atol=1e-6)
    assert loaded.rows.column("id") == [f"{n:08x}" for n in range(12)]
    with pytest.raises(InputError, match="1 shards added"):
        load_index(tmp_path / "idx")
    monkeypatch.undo()
    updated = build_index(IndexConfig(emb_dir=emb, out_dir=tmp_path / "idx", update=True))
    assert (updated.added, updated.info.rows) == (6, 18)
    load_index(tmp_path / "idx")  # current now


@pytest.fixture()
def damaged(tmp_path, tiny_encoder):
    """An embeddings folder whose second shard is cut short (a copy interrupted, a bad disk)."""
    _write(tmp_path / "emb", 0, 0, 5, tiny_encoder.fingerprint, tiny_encoder.embed_dim)
    _write(tmp_path / "emb", 1, 5, 5, tiny_encoder.fingerprint, tiny_encoder.embed_dim)
    shard = store.shard_path(tmp_path / "emb", 1)
    shard.write_bytes(shard.read_bytes()[:300])
    return tmp_path / "emb"


@pytest.mark.parametrize(
    "command",
    [
        ["index", "{emb}", "-o", "{tmp}/idx"],
        ["search", "a dog", "--embeddings", "{emb}", "-m", TINY, "--device", "cpu"],
        ["zeroshot", "{emb}", "--labels", "a,b", "--device", "cpu"],
        ["audit", "{emb}", "--device", "cpu"],
        ["embed", "{tmp}/nothing.txt", "-o", "{emb}", "-m", TINY, "--device", "cpu"],
    ],
    ids=["index", "search", "zeroshot", "audit", "embed"],
)
def test_a_damaged_shard_is_named_with_its_remedy(damaged, tmp_path, command):
    (tmp_path / "nothing.txt").write_text("a caption")
    args = [part.format(emb=damaged, tmp=tmp_path) for part in command]
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 1, result.output
    squashed = "".join(result.stderr.split())  # rich folds a long path across lines
    assert f"Error:Embeddingshard{damaged / 'part-00001.parquet'}isunreadable" in squashed
    assert "Hint:Deletepart-00001.parquetandrunthesame`clipkitembed`command" in squashed
    assert "Unexpected" not in squashed


def test_shards_of_two_models_are_refused_by_every_reader(tmp_path):
    _write(tmp_path / "emb", 0, 0, 5)
    shutil.copy(store.shard_path(tmp_path / "emb", 0), tmp_path / "a.parquet")
    _write(tmp_path / "emb", 1, 5, 5, fingerprint="fp-b")  # copied in from another folder
    for read in (
        lambda: store.read_vectors(tmp_path / "emb"),
        lambda: build_index(IndexConfig(emb_dir=tmp_path / "emb", out_dir=tmp_path / "idx")),
        lambda: store.read_existing(tmp_path / "emb"),
    ):
        with pytest.raises(InputError, match="come from different models") as error:
            read()
        assert "part-00001.parquet" in str(error.value)


def test_rows_are_read_for_the_asked_ids_only(tmp_path):
    """What exact search reads for its hits: shards differ in their pass-through columns."""
    _write(tmp_path, 0, 0, 3)  # no pass-through columns
    vectors = np.eye(DIM, dtype=np.float32)[:3]
    ids = ["a", "b", "c"]
    store.write_shard(
        store.shard_path(tmp_path, 1),
        {
            "id": ids,
            "uri": ids,
            "kind": ["image"] * 3,
            "text": [None] * 3,
            "url": ["u-a", None, "u-c"],
            "license": ["cc", "cc", None],
        },
        vectors,
        store.ModelStamp(TINY, "fp-a", DIM),
    )
    found = store.read_rows_by_id(tmp_path, {"b", "c", "00000001", "nowhere"})
    core = {"kind": "image", "text": None}
    assert found == {
        "b": {"uri": "b", **core, "license": "cc"},
        "c": {"uri": "c", **core, "url": "u-c"},
        "00000001": {"uri": "/00000001.jpg", **core},
    }
    assert store.read_rows_by_id(tmp_path, set()) == {}


def test_an_exact_scan_keeps_ids_compactly_and_finds_every_row(tmp_path):
    """Exact search keeps only the scanned ids (fixed-width bytes where the ids allow it, as
    they come from Arrow, sliced batches included) and reads its hits' rows afterwards."""
    from clipkit.search.run import _exact

    first = _write(tmp_path, 0, 0, 5)  # 8-character ids
    ragged = ["a", "bb", "ccc"]  # ids of different lengths: kept as they are
    texts = np.eye(DIM, dtype=np.float32)[10:13]
    store.write_shard(
        store.shard_path(tmp_path, 1),
        {
            "id": ragged,
            "uri": [f"/{i}.txt" for i in ragged],
            "kind": ["text"] * 3,
            "text": [f"text {i}" for i in ragged],
        },
        texts,
        store.ModelStamp(TINY, "fp-a", DIM),
    )
    pieces = list(store.iter_ids_and_vectors(tmp_path, batch_rows=2))  # batches are slices
    assert [ids.dtype.kind for ids, _ in pieces] == ["S", "S", "S", "O", "S"]  # ["a", "bb"]: O
    ids = [i.decode() if isinstance(i, bytes) else i for block, _ in pieces for i in block]
    assert ids == [f"{n:08x}" for n in range(5)] + ragged
    np.testing.assert_array_equal(
        np.concatenate([v for _, v in pieces]), np.concatenate([first, texts])
    )
    assert [len(v) for _, v in store.iter_ids_and_vectors(tmp_path, "text")] == [3]

    queries = np.concatenate([first, texts])  # each stored vector finds its own row first
    scores, found, rows = _exact(tmp_path, None, queries, 2)
    assert [rows["id"][r] for r in found[:, 0]] == ids
    assert [rows["uri"][r] for r in found[:, 0]] == [f"/{i}.jpg" for i in ids[:5]] + [
        f"/{i}.txt" for i in ragged
    ]
    assert rows["text"][found[6, 0]] == "text bb"
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    assert len(rows["id"]) == len(set(found.ravel().tolist()))  # the hits' rows only


def test_shards_hold_row_groups_of_one_read_batch_also_after_a_prune(tmp_path):
    # A reader decodes a whole row group at once: one row group per shard cost a 1 M x 512
    # exact search 0.3 GiB more (benchmarks/bench_exact_search_memory.py).
    import pyarrow.parquet as pq

    rows = 2 * store.shards.ROW_GROUP_ROWS + 10
    vectors = _write(tmp_path, 0, 0, rows, dim=4)
    shard = store.shard_path(tmp_path, 0)
    groups = pq.ParquetFile(shard).metadata
    assert groups.num_row_groups == 3
    assert max(groups.row_group(g).num_rows for g in range(3)) == store.shards.ROW_GROUP_ROWS
    np.testing.assert_array_equal(store.read_vectors(tmp_path).vectors, vectors)
    kept = {f"/{n:08x}.jpg": f"{n:08x}" for n in range(1, rows)}  # the first input is gone
    assert store.prune(tmp_path, kept, ("image",)).rows_removed == 1
    assert pq.ParquetFile(shard).metadata.num_row_groups == 3
    np.testing.assert_array_equal(store.read_vectors(tmp_path).vectors, vectors[1:])


def test_an_index_row_map_can_be_read_from_many_threads_at_once(tmp_path, monkeypatch):
    """``clipkit serve`` reads hits' rows from request threads: pyarrow's reader of one file
    is not thread-safe (concurrent reads failed with "ReadRangeCache did not find matching
    cache entry" or crashed the process), so the map must serialise its reads."""
    import threading

    from clipkit.store import tables

    monkeypatch.setattr(tables, "ROW_MAP_GROUP", 64)  # many row groups to read at once
    count = 64 * 40
    ids = [f"{n:08x}" for n in range(count)]
    path = tmp_path / "rows.parquet"
    uris = [f"{i}.jpg" for i in ids]
    tables.write_row_map(
        path, {"id": ids, "uri": uris, "kind": ["image"] * count, "text": [None] * count}
    )
    failures: list[BaseException] = []
    for trial in range(10):
        rows = tables.read_row_map(path)
        start = threading.Barrier(8)

        def read(seed: int, rows=rows, start=start) -> None:
            rng = np.random.default_rng(seed)
            start.wait()
            try:
                for _ in range(10):
                    wanted = sorted(rng.integers(0, count, 8).tolist())
                    got = rows.take(wanted)
                    assert got["id"] == [ids[n] for n in wanted]
                    assert got["uri"] == [f"{ids[n]}.jpg" for n in wanted]
            except BaseException as error:  # noqa: BLE001 - reported below
                failures.append(error)

        threads = [threading.Thread(target=read, args=(8 * trial + n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == []
