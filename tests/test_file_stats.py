"""The stat cache of ``clipkit embed`` (``_files.parquet``): a re-run does not read a file
whose size and mtime are those recorded when it was read, and whose content has a row (as
rclip does); any other file is read and hashed; ``--rehash`` reads them all. A damaged cache
is an empty one."""

from __future__ import annotations

import os

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from clipkit import cli
from clipkit.embed import embed
from clipkit.inputs import pipeline
from clipkit.store import FILES_FILE, read_file_stats
from tests.helpers import edit_image, embed_args, embed_config, make_images, rows, torchrun


@pytest.fixture()
def reads(monkeypatch) -> list[str]:
    """Every path the image pipeline reads (workers=0: in this process)."""
    seen: list[str] = []
    original = pipeline.read_bytes

    def counting(path: str) -> bytes:
        seen.append(os.path.basename(path))
        return original(path)

    monkeypatch.setattr(pipeline, "read_bytes", counting)
    return seen


def test_a_rerun_reads_no_unchanged_file(tmp_path, reads):
    images = make_images(tmp_path / "d", 5)
    first = embed(embed_config([tmp_path / "d"], tmp_path / "out"))
    assert first.embedded == 5 and len(reads) == 5
    stats = read_file_stats(tmp_path / "out")
    assert {os.path.basename(uri) for uri in stats} == {p.name for p in images}
    assert all(size == os.stat(uri).st_size for uri, (size, _, _) in stats.items())
    reads.clear()
    again = embed(embed_config([tmp_path / "d"], tmp_path / "out"))
    assert reads == []
    assert (again.embedded, again.already_present, again.changed) == (0, 5, 0)


def test_touched_edited_and_new_files_are_read(tmp_path, reads):
    images = make_images(tmp_path / "d", 4)
    embed(embed_config([tmp_path / "d"], tmp_path / "out"))
    os.utime(images[0], ns=(1, 1))  # touched: same bytes, another mtime
    edit_image(images[1], 1)  # edited
    make_images(tmp_path / "d", 1, start=10)  # new
    reads.clear()
    again = embed(embed_config([tmp_path / "d"], tmp_path / "out"))
    assert sorted(reads) == ["img0000.jpg", "img0001.png", "img0010.jpg"]
    assert (again.embedded, again.already_present, again.changed) == (2, 3, 1)
    reads.clear()
    assert embed(embed_config([tmp_path / "d"], tmp_path / "out")).already_present == 5
    assert reads == []  # the touched file's new mtime was recorded


def test_an_edit_that_keeps_size_and_mtime_needs_rehash(tmp_path, reads):
    (image,) = make_images(tmp_path / "d", 1)
    embed(embed_config([tmp_path / "d"], tmp_path / "out"))
    before = os.stat(image)
    data = bytearray(image.read_bytes())
    data[-3] ^= 0xFF  # same size
    image.write_bytes(bytes(data))
    os.utime(image, ns=(before.st_atime_ns, before.st_mtime_ns))  # as `rsync -t` might leave it
    reads.clear()
    assert embed(embed_config([tmp_path / "d"], tmp_path / "out")).changed == 0  # trusted: not read
    assert reads == []
    rehashed = embed(embed_config([tmp_path / "d"], tmp_path / "out", rehash=True))
    assert reads == ["img0000.jpg"]
    assert (rehashed.changed, rehashed.embedded) == (1, 1)


def test_a_damaged_cache_is_an_empty_one(tmp_path, reads):
    make_images(tmp_path / "d", 2)
    embed(embed_config([tmp_path / "d"], tmp_path / "out"))
    (tmp_path / "out" / FILES_FILE).write_bytes(b"not parquet")
    reads.clear()
    again = embed(embed_config([tmp_path / "d"], tmp_path / "out"))
    assert again.already_present == 2 and len(reads) == 2
    assert len(pq.read_table(tmp_path / "out" / FILES_FILE)) == 2  # written afresh


def test_prune_keeps_the_cache_to_the_files_found(tmp_path, reads):
    images = make_images(tmp_path / "d", 3)
    embed(embed_config([tmp_path / "d"], tmp_path / "out"))
    images[2].unlink()
    pruned = embed(embed_config([tmp_path / "d"], tmp_path / "out", prune=True))
    assert pruned.pruned == 1 and len(rows(tmp_path / "out")) == 2
    assert {os.path.basename(uri) for uri in read_file_stats(tmp_path / "out")} == {
        images[0].name,
        images[1].name,
    }


def test_cli_rehash(tmp_path):
    make_images(tmp_path / "d", 1)
    args = embed_args(str(tmp_path / "d"), str(tmp_path / "out"))
    runner = CliRunner()
    assert runner.invoke(cli.app, args).exit_code == 0
    again = runner.invoke(cli.app, [*args, "--rehash"])
    assert again.exit_code == 0 and "already present 1" in " ".join(again.output.split())


def test_pruning_texts_keeps_the_image_cache(tmp_path, reads):
    from clipkit.inputs.sources import Kind

    make_images(tmp_path / "d", 2)
    (tmp_path / "d" / "a.txt").write_text("words")
    (tmp_path / "d" / "b.txt").write_text("other words")
    embed(embed_config([tmp_path / "d"], tmp_path / "out"))
    (tmp_path / "d" / "a.txt").unlink()
    assert (
        embed(embed_config([tmp_path / "d"], tmp_path / "out", kind=Kind.TEXT, prune=True)).pruned
        == 1
    )
    assert len(read_file_stats(tmp_path / "out")) == 2


@pytest.mark.e2e
def test_ranks_hash_only_the_files_the_cache_does_not_vouch_for(tmp_path, reads):
    """``embed_plan.image_ids``, the torchrun path's hashing, with a world of one."""
    from clipkit.embed import plan as embed_plan
    from clipkit.infra import distributed
    from clipkit.inputs.decode import content_id
    from clipkit.inputs.sources import SourceOptions, discover

    images = make_images(tmp_path / "d", 4)
    embed(embed_config([tmp_path / "d"], tmp_path / "out"))
    os.utime(images[0], ns=(1, 1))  # touched: its entry no longer vouches for it
    recorded = read_file_stats(tmp_path / "out")
    known = set(rows(tmp_path / "out"))
    known.discard(content_id(images[1].read_bytes()))  # vouched-for content without a row
    items = sorted(discover([str(tmp_path / "d")], SourceOptions()).items, key=lambda i: i.uri)
    reads.clear()
    ids, entries = embed_plan.image_ids(items, distributed.World(), 0, recorded, known)
    assert sorted(reads) == [images[0].name, images[1].name]
    assert ids == [content_id(path.read_bytes()) for path in images]
    assert entries == {
        str(path): (os.stat(path).st_size, os.stat(path).st_mtime_ns, item_id)
        for path, item_id in zip(images, ids, strict=True)
    }


@pytest.mark.e2e
def test_reruns_under_two_gloo_processes_use_the_cache(tmp_path):
    import subprocess

    images = make_images(tmp_path / "d", 6, size=(20, 20))
    launcher = torchrun("-m", "clipkit", *embed_args(tmp_path / "d", tmp_path / "out"))

    def run() -> str:
        done = subprocess.run(launcher, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return " ".join(done.stderr.split())

    assert "Embedded 6," in run()
    assert set(read_file_stats(tmp_path / "out")) == {str(p) for p in images}  # both ranks'
    for image in images[:2]:  # rank 0 holds image 0, rank 1 image 1
        before = os.stat(image)
        data = bytearray(image.read_bytes())
        data[-3] ^= 0xFF  # same size, same mtime: found only by reading
        image.write_bytes(bytes(data))
        os.utime(image, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert "Embedded 0, skipped 0, already present 6" in run()  # neither rank read them
    # The edits are real: reading finds them (one process will do for that).
    assert embed(embed_config([tmp_path / "d"], tmp_path / "out", rehash=True)).changed == 2
