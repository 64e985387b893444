"""Relative uris and the folder they are relative to (an embeddings folder's *base*: where its
first ``embed`` ran). Readers in another folder get paths that open (search hits, the HTML
gallery, zero-shot and audit reports); an ``embed`` from another folder names each file as the
first run did, for folders, tables, line files and WebDataset shards; folders from before the
base was recorded, and folders moved along with their images, read from the working folder."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from clipkit import cli, store
from clipkit.audit import AuditConfig, audit
from clipkit.embed import embed
from clipkit.index import IndexConfig, build_index
from clipkit.inputs.filenames import UriFrame, locate, reading_base
from clipkit.report import write_audit_report, write_search_gallery, write_zeroshot_report
from clipkit.search import SearchConfig, search
from clipkit.store.parquet import SEAL_KEY
from clipkit.zeroshot import ZeroShotConfig, zeroshot
from tests.helpers import TINY, embed_config, make_images, rows, tar_sample, write_tar_shard

runner = CliRunner()


def test_frame_names_a_file_the_same_however_it_was_typed(tmp_path):
    here, base = str(tmp_path / "work"), str(tmp_path / "data")
    frame = UriFrame(base=base, cwd=here)
    assert frame.uri("../data/imgs/a.jpg") == frame.uri(f"{base}/imgs/a.jpg") == "imgs/a.jpg"
    outside = str(tmp_path / "work" / "pics" / "b.png")
    assert frame.uri("pics/b.png") == frame.uri(outside) == outside  # outside it: absolute
    assert frame.uri(f"{base}/../x/d.png") == str(tmp_path / "x" / "d.png")
    assert frame.uri("https://example.com/d.png") == "https://example.com/d.png"
    (tmp_path / "data" / "imgs").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "data")  # the base reached through a symlink
    assert frame.uri(str(tmp_path / "link" / "imgs" / "a.jpg")) == "imgs/a.jpg"
    first = UriFrame(base=base, cwd=base)  # the first run into a folder
    assert first.uri("imgs/a.jpg") == first.uri("./imgs/../imgs/a.jpg") == "imgs/a.jpg"
    assert first.uri("../work/pics/b.png") == outside
    (tmp_path / "data" / "photos").symlink_to(tmp_path / "work")  # a symlinked folder inside
    assert first.uri("photos/b.png") == "photos/b.png"


def test_readers_join_relative_uris_to_a_base_that_exists_elsewhere(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    recorded = str(tmp_path / "data")
    base = reading_base(recorded)
    assert base == recorded
    assert locate("imgs/a.jpg", base) == os.path.join(recorded, "imgs/a.jpg")
    assert locate("/abs/a.jpg", base) == "/abs/a.jpg"
    assert locate("https://example.com/a.jpg", base) == "https://example.com/a.jpg"
    assert reading_base(None) is None  # no base recorded: from here
    assert reading_base(str(tmp_path / "gone")) is None  # moved with its images: from here
    monkeypatch.chdir(tmp_path / "data")
    assert reading_base(recorded) is None  # in the base: as stored
    assert locate("imgs/a.jpg", None) == "imgs/a.jpg"


@pytest.fixture()
def project(tmp_path, monkeypatch, tiny_encoder):
    """``data/imgs`` embedded from ``data`` (relative uris), and an empty ``work`` folder."""
    data, work = tmp_path / "data", tmp_path / "work"
    images = make_images(data / "imgs", 3)
    work.mkdir()
    monkeypatch.chdir(data)
    embed(embed_config(["imgs"], Path("emb")))
    return data, work, images


def _hits(**where) -> list:
    found = search(SearchConfig(texts=("a photo",), k=10, device="cpu", **where))
    return list(found.results[0].hits)


def test_shards_record_the_folder_their_uris_are_relative_to(project):
    data, _, images = project
    assert store.read_base(data / "emb") == str(data)
    assert sorted(row["uri"] for row in rows(data / "emb").values()) == [
        f"imgs/{image.name}" for image in images
    ]


@pytest.mark.parametrize("where", ["embeddings", "index"])
def test_search_from_another_folder_gives_paths_that_open(project, monkeypatch, where):
    data, work, images = project
    monkeypatch.chdir(work)
    if where == "index":
        build_index(IndexConfig(emb_dir=data / "emb", out_dir=work / "idx"))
        hits = _hits(index_dir=work / "idx")
    else:
        hits = _hits(embeddings_dir=data / "emb")
    assert sorted(hit.uri for hit in hits) == [f"imgs/{image.name}" for image in images]
    assert sorted(hit.path for hit in hits) == sorted(str(image) for image in images)
    gallery = write_search_gallery(
        search(SearchConfig(texts=("a photo",), k=3, device="cpu", embeddings_dir=data / "emb")),
        work / "gallery.html",
    )
    page = gallery.read_text()
    assert page.count("data:image/jpeg;base64,") == 3 and "image unreadable" not in page


def test_the_search_table_and_json_show_the_path_from_here(project, monkeypatch):
    data, work, images = project
    monkeypatch.chdir(work)
    args = ["search", "a photo", "--embeddings", str(data / "emb"), "-k", "3", "--device", "cpu"]
    as_json = runner.invoke(cli.app, [*args, "--format", "jsonl"])
    assert as_json.exit_code == 0, as_json.output
    paths = [json.loads(line)["path"] for line in as_json.stdout.splitlines()]
    assert sorted(paths) == sorted(str(image) for image in images)
    table = runner.invoke(cli.app, [*args, "--format", "table"])
    assert table.exit_code == 0, table.output
    unwrapped = "".join(table.stdout.replace("│", "").split())  # long paths wrap in cells
    assert all(str(image) in unwrapped for image in images)
    monkeypatch.chdir(data)  # in the base the stored uri opens as it is
    as_json = runner.invoke(cli.app, [*args, "--format", "jsonl"])
    paths = [json.loads(line)["path"] for line in as_json.stdout.splitlines()]
    assert sorted(paths) == [f"imgs/{image.name}" for image in images]


def test_an_embed_from_another_folder_names_files_as_the_first_run_did(project, monkeypatch):
    data, work, images = project
    monkeypatch.chdir(work)
    again = embed(embed_config(["../data/imgs"], Path("../data/emb")))
    assert (again.embedded, again.already_present, again.aliases) == (0, 3, 0)
    added = make_images(data / "imgs", 1, start=7)
    more = embed(embed_config([data / "imgs"], data / "emb"))  # typed absolute this time
    assert (more.embedded, more.already_present, more.aliases) == (1, 3, 0)
    found = sorted(row["uri"] for row in rows(data / "emb").values())
    assert found == sorted(f"imgs/{image.name}" for image in [*images, *added])
    assert store.read_aliases(data / "emb") == []
    stats = pq.read_table(data / "emb" / store.FILES_FILE).column("uri").to_pylist()
    assert sorted(stats) == found  # the stat cache vouches for them from anywhere


def test_files_outside_the_base_are_named_absolutely_from_anywhere(project, monkeypatch):
    data, work, _ = project
    photos = make_images(data.parent / "photos", 2, start=30)
    first = embed(embed_config(["../photos"], Path("emb")))  # from the base, typed relative
    assert first.embedded == 2
    monkeypatch.chdir(work)
    for typed in ("../photos", str(data.parent / "photos")):
        again = embed(embed_config([typed], data / "emb"))
        assert (again.embedded, again.already_present, again.aliases) == (0, 2, 0)
    uris = {row["uri"] for row in rows(data / "emb").values()}
    assert {str(photo) for photo in photos} <= uris


def test_tables_lines_and_shards_from_another_folder_are_named_from_the_base(project, monkeypatch):
    data, work, _ = project
    extra = data / "extra"
    pictured = make_images(extra, 2, start=20)
    with open(extra / "pairs.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filepath", "caption"])
        writer.writerows([[pictured[0].name, "a kite"], [pictured[1].name, "a tram"]])
    (extra / "notes.txt").write_text("first line\nsecond line\n")
    write_tar_shard(extra / "00000.tar", {"000000": tar_sample(40, "a red kite")})
    monkeypatch.chdir(work)
    embed(embed_config(["../data/extra/pairs.csv", "../data/extra/00000.tar"], Path("../data/emb")))
    embed(embed_config(["../data/extra/notes.txt"], Path("../data/emb"), lines=True))
    ids = list(rows(data / "emb"))
    by_uri = {row["uri"]: row for row in store.read_rows_by_id(data / "emb", ids).values()}
    wanted = {
        f"extra/{pictured[0].name}",
        f"extra/{pictured[1].name}",
        "extra/pairs.csv#row=0",
        "extra/pairs.csv#row=1",
        "extra/00000.tar#000000.png",
        "extra/00000.tar#000000.txt",
        "extra/notes.txt#L1",
        "extra/notes.txt#L2",
    }
    assert wanted <= set(by_uri)
    # A caption row passes on its image's uri, and a shard's caption its image member's.
    assert by_uri["extra/pairs.csv#row=0"]["filepath"] == f"extra/{pictured[0].name}"
    assert by_uri["extra/00000.tar#000000.txt"]["image"] == "extra/00000.tar#000000.png"


def _drop_base(folder: Path) -> None:
    for shard in store.list_shards(folder):
        table = pq.read_table(shard)
        # as a clipkit from before bases (and footer seals) wrote it
        dropped = (b"clipkit.base", SEAL_KEY)
        metadata = {k: v for k, v in table.schema.metadata.items() if k not in dropped}
        pq.write_table(table.replace_schema_metadata(metadata), shard)


def test_a_folder_without_a_base_reads_its_uris_from_here(project, monkeypatch):
    data, work, images = project
    _drop_base(data / "emb")
    assert store.read_base(data / "emb") is None
    hits = _hits(embeddings_dir=data / "emb")  # from data, where they were embedded
    assert sorted(hit.path for hit in hits) == [f"imgs/{image.name}" for image in images]
    make_images(data / "imgs", 1, start=9)
    embed(embed_config(["imgs"], Path("emb")))  # a run adds the base it ran in to its shard
    assert store.read_base(data / "emb") == str(data)


def test_a_folder_moved_with_its_images_reads_from_where_it_is(project, monkeypatch):
    data, _, images = project
    moved = data.parent / "moved"
    monkeypatch.chdir(data.parent)
    shutil.move(str(data), str(moved))
    monkeypatch.chdir(moved)
    hits = _hits(embeddings_dir=Path("emb"))
    assert sorted(hit.path for hit in hits) == [f"imgs/{image.name}" for image in images]
    make_images(moved / "imgs", 1, start=9)
    again = embed(embed_config(["imgs"], Path("emb")))
    assert (again.embedded, again.already_present, again.aliases) == (1, 3, 0)
    assert store.read_base(moved / "emb") == str(moved)


def test_zeroshot_and_audit_reports_show_images_from_another_folder(
    tmp_path, monkeypatch, tiny_encoder
):
    data, work = tmp_path / "data", tmp_path / "work"
    for n, name in enumerate(["cat", "dog"]):
        for image in make_images(data / "tree" / name, 2, start=10 * n):
            image.with_suffix(".txt").write_text(f"a photo of a {name}")
    work.mkdir()
    monkeypatch.chdir(data)
    embed(embed_config(["tree"], Path("emb")))
    monkeypatch.chdir(work)
    classified = zeroshot(
        ZeroShotConfig(images=data / "emb", class_tree=True, device="cpu", workers=0)
    )
    assert classified.metrics is not None  # the class folders, read from the uris
    assert {p.path for p in classified.predictions} == {
        str(data / p.uri) for p in classified.predictions
    }
    page = write_zeroshot_report(classified, work / "zeroshot.html")[0].read_text()
    assert page.count("data:image/jpeg;base64,") >= 4 and "image unavailable" not in page
    audited = audit(AuditConfig(data=data / "emb", threshold=1.0, device="cpu"))
    assert len(audited.flagged) == 4
    assert {p.image_path for p in audited.pairs} == {str(data / p.image) for p in audited.pairs}
    page = write_audit_report(audited, work / "audit.html")[0].read_text()
    assert page.count("data:image/jpeg;base64,") == 4 and "image unavailable" not in page


def test_an_item_holds_one_string_when_its_uri_is_its_path(tmp_path, monkeypatch):
    # A million items held two copies of every path when uri and path were made apart.
    from clipkit.inputs.sources import SourceOptions, discover

    images = make_images(tmp_path / "data" / "imgs", 2)
    write_tar_shard(tmp_path / "data" / "00000.tar", {"000000": tar_sample(40, "a red kite")})
    monkeypatch.chdir(tmp_path / "data")
    here = os.getcwd()
    found = discover(["imgs", "00000.tar"], SourceOptions(frame=UriFrame(here, here))).items
    assert len(found) == 4 and all(item.uri is item.path for item in found)
    elsewhere = UriFrame(base=str(tmp_path), cwd=here)
    found = discover(["imgs"], SourceOptions(frame=elsewhere)).items
    assert [(item.uri, item.path) for item in found] == [
        (f"data/imgs/{image.name}", f"imgs/{image.name}") for image in images
    ]


def test_the_newest_shard_that_records_a_base_names_it(tmp_path):
    import numpy as np

    def write(number: int, base: str | None) -> None:
        columns = {"id": [f"{number:032x}"], "uri": ["a.jpg"], "kind": ["image"], "text": [None]}
        stamp = store.ModelStamp(TINY, "fp", 4)
        store.write_shard(
            store.shard_path(tmp_path, number),
            columns,
            np.eye(1, 4, dtype=np.float32),
            stamp,
            base=base,
        )

    assert store.read_base(tmp_path) is None  # no shards
    write(0, "/first")
    write(1, "/second")
    write(2, None)  # from before bases were recorded
    assert store.read_base(tmp_path) == "/second"
    snapshot = store.snapshot(tmp_path)
    store.shard_path(tmp_path, 1).unlink()  # a concurrent --prune emptied it
    assert store.read_base(snapshot) == "/first"
