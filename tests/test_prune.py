"""Re-running ``clipkit embed`` after files were edited, deleted, renamed or replaced: changes
are counted, and ``--prune`` makes the folder hold what a fresh run on the sources would (rows,
vectors, aliases), without embedding again what is still there. Inputs that fail to read keep
their rows; rows of a kind outside ``--kind`` are left alone."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from clipkit import cli
from clipkit.embed import embed
from clipkit.inputs.decode import content_id
from clipkit.inputs.sources import Kind
from tests.helpers import (
    TINY,
    clustered_embeddings,
    edit_image,
    embed_args,
    embed_config,
    make_images,
    rows,
    torchrun,
)


def _aliases(out: Path) -> set[tuple[str, str]]:
    path = out / "_aliases.parquet"
    if not path.is_file():
        return set()
    return {(a["id"], Path(a["uri"]).name) for a in pq.read_table(path).to_pylist()}


def _contents(out: Path) -> dict[str, tuple[str, str, tuple[float, ...]]]:
    """id -> (file name, kind, embedding): a folder's rows, independent of shard layout."""
    return {
        item_id: (Path(row["uri"]).name, row["kind"], tuple(row["embedding"]))
        for item_id, row in rows(out).items()
    }


def _holdings(out: Path) -> dict[str, tuple[str, frozenset[str]]]:
    """id -> (kind, every file name with that content: the row's and its aliases')."""
    names = {item_id: {name} for item_id, (name, _, _) in _contents(out).items()}
    for item_id, name in _aliases(out):
        names[item_id].add(name)
    return {item_id: (row["kind"], frozenset(names[item_id])) for item_id, row in rows(out).items()}


def _vectors(out: Path) -> dict[str, np.ndarray]:
    return {item_id: np.asarray(row["embedding"]) for item_id, row in rows(out).items()}


def test_an_edited_file_is_counted_and_its_old_row_stays_without_prune(tmp_path):
    images = make_images(tmp_path / "d", 2)
    embed(embed_config([tmp_path / "d"], tmp_path / "out"))
    edit_image(images[0], 0)
    again = embed(embed_config([tmp_path / "d"], tmp_path / "out"))
    assert (again.embedded, again.already_present, again.changed, again.pruned) == (1, 1, 1, 0)
    names = sorted(name for name, _, _ in _contents(tmp_path / "out").values())
    assert names == ["img0000.jpg", "img0000.jpg", "img0001.png"]  # the old row is still there


def test_prune_makes_the_folder_equal_a_fresh_run_on_the_sources(tmp_path):
    data = tmp_path / "d"
    images = make_images(data, 6)
    shutil.copy(images[2], data / "copy_of_2.jpg")  # a duplicate: an alias
    (data / "note.txt").write_text("a red square")
    first = embed(embed_config([data], tmp_path / "out", shard_rows=3))
    assert first.embedded == 7

    edit_image(images[0], 0)  # edited: new content under the same name
    images[1].unlink()  # deleted
    images[3].rename(data / "renamed.png")  # renamed: same content, new name
    (data / "copy_of_2.jpg").unlink()  # the copy that has the row goes: name the other one
    shutil.copy(images[5], images[4])  # replaced by the content of another file: an alias now
    (data / "note.txt").write_text("a blue circle")  # an edited text

    pruned = embed(embed_config([data], tmp_path / "out", shard_rows=3, prune=True))
    fresh = embed(embed_config([data], tmp_path / "fresh", shard_rows=3))
    # The same contents, each found under the same names (which copy holds the row and which
    # is the alias may differ), with the same embeddings up to batch-composition rounding.
    assert _holdings(tmp_path / "out") == _holdings(tmp_path / "fresh")
    assert _holdings(tmp_path / "out")[content_id(images[5].read_bytes())][1] == {
        images[4].name,
        images[5].name,
    }
    assert _contents(tmp_path / "out")[content_id(images[2].read_bytes())][0] == images[2].name
    assert "renamed.png" in {name for name, _, _ in _contents(tmp_path / "out").values()}
    vectors, expected = _vectors(tmp_path / "out"), _vectors(tmp_path / "fresh")
    for item_id, vector in vectors.items():
        np.testing.assert_allclose(vector, expected[item_id], atol=1e-5)
    assert pruned.embedded == 2  # only the edited image and the edited text
    assert fresh.embedded == 5  # img0000 (edited), 0002, 0003 (renamed), 0005, the note
    # Gone: img0000's and note.txt's old content, img0001 (deleted), img0004's old content.
    assert (pruned.changed, pruned.pruned, pruned.moved) == (3, 4, 2)
    again = embed(embed_config([data], tmp_path / "out", prune=True))
    assert (again.embedded, again.changed, again.pruned, again.moved) == (0, 0, 0, 0)


def test_inputs_that_fail_to_read_keep_their_rows(tmp_path):
    images = make_images(tmp_path / "d", 2)
    embed(embed_config([tmp_path / "d"], tmp_path / "out"))
    before = _contents(tmp_path / "out")
    images[0].unlink()
    images[0].symlink_to(tmp_path / "unmounted" / "img.jpg")  # listed, but cannot be read
    result = embed(embed_config([tmp_path / "d"], tmp_path / "out", prune=True))
    assert result.skipped == 1 and result.pruned == 0
    assert _contents(tmp_path / "out") == before


def test_prune_leaves_rows_of_other_kinds_alone(tmp_path):
    images = make_images(tmp_path / "d", 2)
    (tmp_path / "d" / "a.txt").write_text("words")
    (tmp_path / "d" / "b.txt").write_text("words")  # an alias of a text row
    embed(embed_config([tmp_path / "d"], tmp_path / "out"))
    images[1].unlink()
    (tmp_path / "d" / "a.txt").unlink()
    result = embed(embed_config([tmp_path / "d"], tmp_path / "out", kind=Kind.IMAGE, prune=True))
    assert result.pruned == 1
    kinds = sorted((kind, name) for name, kind, _ in _contents(tmp_path / "out").values())
    assert kinds == [("image", "img0000.jpg"), ("text", "a.txt")]
    assert _aliases(tmp_path / "out") == {(content_id(b"words"), "b.txt")}


def test_a_deleted_shard_row_set_empties_and_removes_the_shard(tmp_path):
    images = make_images(tmp_path / "d", 4)
    embed(embed_config([tmp_path / "d"], tmp_path / "out", shard_rows=2))
    assert len(list((tmp_path / "out").glob("part-*.parquet"))) == 2
    for image in images[:2]:  # the first shard's two rows
        image.unlink()
    result = embed(embed_config([tmp_path / "d"], tmp_path / "out", prune=True))
    assert result.pruned == 2
    assert [p.name for p in sorted((tmp_path / "out").glob("part-*.parquet"))] == [
        "part-00001.parquet"
    ]
    shard = pq.ParquetFile(tmp_path / "out" / "part-00001.parquet")
    assert shard.schema_arrow.metadata[b"clipkit.model"] == TINY.encode()


def test_cli_reports_changes_and_prunes(tmp_path):
    images = make_images(tmp_path / "d", 2)
    args = embed_args(str(tmp_path / "d"), str(tmp_path / "out"))
    runner = CliRunner()
    assert runner.invoke(cli.app, args).exit_code == 0
    edit_image(images[0], 0)
    kept = runner.invoke(cli.app, args)
    assert (
        "1 inputs changed since they were embedded (their old rows remain: --prune drops them)"
        in " ".join(kept.output.split())
    )
    os.remove(images[1])
    pruned = runner.invoke(cli.app, [*args, "--prune"])
    assert pruned.exit_code == 0, pruned.output
    assert "pruned 2 rows of inputs no longer found" in " ".join(pruned.output.split())
    assert len(rows(tmp_path / "out")) == 1


@pytest.mark.parametrize("workers", [0, 2])
def test_prune_sees_already_present_images_read_by_workers(tmp_path, workers):
    # Content already embedded is hashed in the workers, not decoded: it must still count as
    # found, or --prune would drop every unchanged image.
    make_images(tmp_path / "d", 3)
    embed(embed_config([tmp_path / "d"], tmp_path / "out", workers=workers))
    result = embed(embed_config([tmp_path / "d"], tmp_path / "out", workers=workers, prune=True))
    assert (result.already_present, result.pruned, result.moved) == (3, 0, 0)
    assert len(rows(tmp_path / "out")) == 3


@pytest.mark.e2e
def test_prune_under_two_gloo_processes_sees_every_rank_s_inputs(tmp_path):
    # Rank 0 prunes after all ranks wrote their shards; it must know the inputs that the other
    # rank claimed, or it would drop their rows.
    import subprocess

    data = tmp_path / "data"
    images = make_images(data, 9, size=(20, 20))
    embed(embed_config([data], tmp_path / "out", shard_rows=4))
    edit_image(images[0], 0)
    images[1].unlink()
    images[2].rename(data / "moved.png")
    make_images(data, 2, start=20)
    launcher = torchrun("-m", "clipkit")
    done = subprocess.run(
        [
            *launcher,
            *embed_args(
                data, tmp_path / "out", "--batch-size", "2", "--shard-rows", "4", "--prune"
            ),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    message = " ".join(done.stderr.split())
    assert "Embedded 3," in message and "1 inputs changed" in message
    assert "pruned 2 rows of inputs no longer found, 1 rows now name another copy" in message
    embed(embed_config([data], tmp_path / "fresh"))
    assert _holdings(tmp_path / "out") == _holdings(tmp_path / "fresh")


def test_index_update_after_prune_drops_gone_rows_of_an_exact_index(tmp_path):
    from clipkit.index import IndexConfig, build_index, load_index

    images = make_images(tmp_path / "d", 6)
    embed(embed_config([tmp_path / "d"], tmp_path / "emb"))
    build_index(IndexConfig(emb_dir=tmp_path / "emb", out_dir=tmp_path / "idx"))
    images[1].unlink()
    images[4].unlink()
    images[2].rename(tmp_path / "d" / "moved.png")
    embed(embed_config([tmp_path / "d"], tmp_path / "emb", prune=True))
    updated = build_index(
        IndexConfig(emb_dir=tmp_path / "emb", out_dir=tmp_path / "idx", update=True)
    )
    assert (updated.added, updated.dropped, updated.removed, updated.info.rows) == (0, 2, 0, 4)
    loaded = load_index(tmp_path / "idx")  # its parts agree and its source is current
    fresh = build_index(IndexConfig(emb_dir=tmp_path / "emb", out_dir=tmp_path / "fresh"))
    expected = load_index(fresh.out_dir).rows
    assert sorted(zip(loaded.rows.column("id"), loaded.rows.column("uri"), strict=True)) == sorted(
        zip(expected.column("id"), expected.column("uri"), strict=True)
    )
    # Each remaining embedding finds its own row first: vectors and rows still line up.
    vectors = np.stack(
        [
            np.asarray(rows(tmp_path / "emb")[i]["embedding"], np.float32)
            for i in loaded.rows.column("id")
        ]
    )
    _, found = loaded.search(vectors, 1)
    assert found[:, 0].tolist() == list(range(4))


@pytest.mark.parametrize(("index_type", "self_found"), [("ivf", 1.0), ("ivfpq", 0.9)])
def test_index_update_drops_gone_rows_of_an_ivf_index(
    tmp_path, tiny_encoder, index_type, self_found
):
    """The survivors are renumbered: row r of the row map is still vector r afterwards."""
    from clipkit import store
    from clipkit.index import IndexConfig, build_index, load_index

    stamp = store.ModelStamp(TINY, tiny_encoder.fingerprint, 64)
    # shards of 1,500 rows
    points = clustered_embeddings(tmp_path / "emb", stamp, count=3000, clusters=20, dim=64)
    build_index(
        IndexConfig(emb_dir=tmp_path / "emb", out_dir=tmp_path / "idx", index_type=index_type)
    )
    first_shard = tmp_path / "emb" / "part-00000.parquet"
    shutil.move(first_shard, tmp_path / "kept.parquet")
    update = IndexConfig(emb_dir=tmp_path / "emb", out_dir=tmp_path / "idx", update=True)
    updated = build_index(update)
    assert (updated.dropped, updated.removed, updated.info.rows) == (1500, 0, 1500)
    vector_of = {f"{i:08x}": point for i, point in enumerate(points)}

    def share_finding_themselves() -> float:
        loaded = load_index(tmp_path / "idx")  # its parts agree and its source is current
        queries = np.stack([vector_of[item_id] for item_id in loaded.rows.column("id")])
        _, found = loaded.search(queries, 1)
        return float(np.mean(found[:, 0] == np.arange(len(queries))))

    assert share_finding_themselves() >= self_found
    shutil.move(tmp_path / "kept.parquet", first_shard)  # rows added after the renumbering
    again = build_index(update)
    assert (again.added, again.dropped, again.info.rows) == (1500, 0, 3000)
    assert share_finding_themselves() >= self_found


def test_index_update_keeps_gone_rows_of_an_hnsw_index_and_says_so(tmp_path, tiny_encoder):
    from clipkit import store
    from clipkit.index import IndexConfig, build_index, load_index

    stamp = store.ModelStamp(TINY, tiny_encoder.fingerprint, 64)
    clustered_embeddings(tmp_path / "emb", stamp, count=3000, clusters=20, dim=64)
    build_index(IndexConfig(emb_dir=tmp_path / "emb", out_dir=tmp_path / "idx", index_type="hnsw"))
    (tmp_path / "emb" / "part-00001.parquet").unlink()
    updated = build_index(
        IndexConfig(emb_dir=tmp_path / "emb", out_dir=tmp_path / "idx", update=True)
    )
    assert (updated.dropped, updated.removed, updated.info.rows) == (0, 1500, 3000)
    assert load_index(tmp_path / "idx").info.removed_rows == 1500
