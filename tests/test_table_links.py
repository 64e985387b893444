"""Captions reach their images whatever the order of the runs: a table embedded after the folder
it captions gives the images (already present, not encoded again) its pass-through columns and
captions, an index update carries them, and audit pairs rows through the recorded links."""

from __future__ import annotations

import csv

import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from clipkit import cli, store
from clipkit.audit import AuditConfig, audit
from clipkit.embed import EmbedConfig, embed
from clipkit.search import SearchConfig, search
from tests.helpers import TINY

COLOURS = {
    "red": (220, 20, 20),
    "green": (20, 200, 30),
    "blue": (20, 30, 220),
    "gold": (240, 200, 10),
}
runner = CliRunner()


@pytest.fixture
def album(tmp_path):
    """photos/NAME.png and captions.csv beside the folder: image, caption, taken."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, colour in COLOURS.items():
        Image.new("RGB", (40, 40), colour).save(photos / f"{name}.png")
    table = tmp_path / "captions.csv"
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption", "taken"])
        for i, name in enumerate(COLOURS):
            writer.writerow([f"photos/{name}.png", f"a {name} square", f"2024-0{i + 1}-01"])
    return tmp_path


def _embed(source, out, **options):
    return embed(EmbedConfig(sources=(str(source),), out_dir=out, model=TINY, device="cpu",
                             workers=0, **options))  # fmt: skip


def _image_meta(emb):
    rows = store.read_vectors(emb, "image", meta=True)
    return {
        uri.split("/")[-1]: {name: values[n] for name, values in rows.meta.items()}
        for n, uri in enumerate(rows.uris)
    }


def test_a_table_after_the_folder_gives_the_images_their_captions(album, monkeypatch):
    monkeypatch.chdir(album)
    emb = album / "emb"
    _embed("photos", emb)
    shards = len(store.list_shards(emb))
    later = _embed("captions.csv", emb)
    assert later.already_present == 4  # the images are not encoded again
    assert later.embedded == 4  # the captions are new
    assert later.filled == 4
    assert len(store.list_shards(emb)) == shards + 1  # only the captions' shard is new
    meta = _image_meta(emb)
    for i, name in enumerate(COLOURS):
        assert meta[f"{name}.png"]["caption"] == f"a {name} square"
        assert meta[f"{name}.png"]["taken"] == f"2024-0{i + 1}-01"

    again = _embed("captions.csv", emb)  # nothing new: nothing rewritten
    assert again.embedded == 0 and again.filled == 0


def test_a_search_hit_shows_the_caption_through_an_updated_index(album, monkeypatch):
    monkeypatch.chdir(album)
    emb, index = album / "emb", album / "index"
    _embed("photos", emb)
    assert (
        runner.invoke(cli.app, ["index", str(emb), "-o", str(index), "--no-onnx-export"]).exit_code
        == 0
    )
    _embed("captions.csv", emb)
    updated = runner.invoke(
        cli.app, ["index", str(emb), "-o", str(index), "--update", "--no-onnx-export"]
    )
    assert updated.exit_code == 0, updated.output
    result = search(SearchConfig(images=(album / "photos" / "blue.png",), index_dir=index, k=1))
    hit = result.results[0].hits[0]
    assert hit.uri.endswith("blue.png")
    assert hit.meta["caption"] == "a blue square" and hit.meta["taken"] == "2024-03-01"


@pytest.mark.parametrize("order", ["folder first", "table first"])
def test_audit_pairs_rows_through_the_recorded_links(album, monkeypatch, order):
    monkeypatch.chdir(album)
    emb = album / "emb"
    sources = ["photos", "captions.csv"]
    for source in sources if order == "folder first" else sources[::-1]:
        _embed(source, emb)
    result = audit(AuditConfig(data=emb, device="cpu"))
    pairs = {(p.image.split("/")[-1], p.caption) for p in result.pairs}
    assert pairs == {(f"{name}.png", f"a {name} square") for name in COLOURS}
    assert not result.failures
    direct = audit(AuditConfig(data=album / "captions.csv", model=TINY, device="cpu", workers=0))
    by_caption = {p.caption: p.cosine for p in direct.pairs}
    for pair in result.pairs:
        assert pair.cosine == pytest.approx(by_caption[pair.caption], abs=1e-5)


def test_a_value_a_row_holds_is_kept(album, monkeypatch):
    monkeypatch.chdir(album)
    emb = album / "emb"
    _embed("captions.csv", emb)
    other = album / "other.csv"
    other.write_text("image,caption\nphotos/red.png,a crimson tile\n")
    later = _embed("other.csv", emb)
    assert later.filled == 0
    assert _image_meta(emb)["red.png"]["caption"] == "a red square"
    # both captions now pair with the image
    result = audit(AuditConfig(data=emb, device="cpu"))
    red = sorted(p.caption for p in result.pairs if p.image.endswith("red.png"))
    assert red == ["a crimson tile", "a red square"]


def test_an_image_with_no_caption_is_listed_not_paired(album, monkeypatch):
    monkeypatch.chdir(album)
    Image.new("RGB", (40, 40), (0, 0, 0)).save(album / "photos" / "black.png")
    emb = album / "emb"
    _embed("photos", emb)
    _embed("captions.csv", emb)
    result = audit(AuditConfig(data=emb, device="cpu"))
    assert len(result.pairs) == 4
    assert [(uri.split("/")[-1], stage) for uri, stage, _ in result.failures] == [
        ("black.png", "caption")
    ]
    assert pq.read_table(store.list_shards(emb)[0]).num_rows == 5
