"""Pass-through columns reach search results, as clip-retrieval's metadata does: a table's
other columns, an image row's caption and a caption row's image path come back with each hit,
from an index (built and updated) and from exact search, in every output format and in the
HTML gallery (escaped). Rows embedded from a folder, with no such columns, have none."""

from __future__ import annotations

import csv
import io
import json

import pytest
from typer.testing import CliRunner

from clipkit import cli
from clipkit.embed import embed
from clipkit.index import IndexConfig, build_index, load_index
from clipkit.search import SearchConfig, search
from tests.helpers import embed_config, make_images

runner = CliRunner()
CAPTIONS = ["a <b>red</b> kite", "two dogs, running", "a tram at night"]


def _table(folder, images, captions, first: int) -> None:
    with open(folder / f"pairs{first}.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filepath", "caption", "url", "rank"])  # "rank" is a name of ours too
        for n, (image, caption) in enumerate(zip(images, captions, strict=True), start=first):
            writer.writerow([image.name, caption, f"https://example.com/{n}", str(n)])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A plain folder of 2 images, then a table of 3 image-caption rows, into one folder."""
    root = tmp_path_factory.mktemp("meta")
    plain = make_images(root / "plain", 2)
    pictured = make_images(root / "table", 3, start=10)
    _table(root / "table", pictured, CAPTIONS, 0)
    embed(embed_config([root / "plain"], root / "emb"))
    embed(embed_config([root / "table" / "pairs0.csv"], root / "emb"))
    build_index(IndexConfig(emb_dir=root / "emb", out_dir=root / "idx"))
    return root, plain, pictured


def _by_image(root, image, where: dict) -> dict:
    found = search(SearchConfig(images=(image,), k=1, device="cpu", **where))
    return found.results[0].hits[0].meta


@pytest.mark.parametrize("where", ["index", "embeddings"])
def test_each_hit_carries_its_row_s_pass_through_values(corpus, where):
    root, plain, pictured = corpus
    source = (
        {"index_dir": root / "idx"}
        if where == "index"
        else {"embeddings_dir": root / "emb", "kind": "image"}
    )
    assert _by_image(root, pictured[1], source) == {
        "caption": CAPTIONS[1],
        "url": "https://example.com/1",
        "rank": "1",
    }
    assert _by_image(root, plain[0], source) == {}


def test_a_caption_hit_names_its_image(corpus):
    root, _, pictured = corpus
    found = search(
        SearchConfig(
            texts=(CAPTIONS[2],), embeddings_dir=root / "emb", kind="text", k=1, device="cpu"
        )
    )
    hit = found.results[0].hits[0]
    assert hit.text == CAPTIONS[2]
    # The table holds the bare file name; the hit names the image as the image's row does.
    by_image = SearchConfig(
        images=(pictured[2],), embeddings_dir=root / "emb", kind="image", k=1, device="cpu"
    )
    image_hit = search(by_image).results[0].hits[0]
    assert image_hit.uri == str(pictured[2])
    assert hit.meta == {"filepath": image_hit.uri, "url": "https://example.com/2", "rank": "2"}


def test_every_format_and_the_gallery_show_them(corpus, tmp_path):
    root, _, pictured = corpus
    base = [
        "search",
        "--image",
        str(pictured[0]),
        "--index",
        str(root / "idx"),
        "-k",
        "2",
        "--device",
        "cpu",
    ]
    as_csv = runner.invoke(cli.app, [*base, "-f", "csv"])
    assert as_csv.exit_code == 0, as_csv.output
    first = next(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert (first["rank"], first["meta.rank"], first["caption"]) == ("1", "0", CAPTIONS[0])
    as_json = json.loads(runner.invoke(cli.app, [*base, "-f", "json"]).stdout)
    assert as_json[0]["hits"][0]["meta"]["url"] == "https://example.com/0"
    line = json.loads(runner.invoke(cli.app, [*base, "-f", "jsonl"]).stdout.splitlines()[0])
    assert line["meta"]["caption"] == CAPTIONS[0]
    table = runner.invoke(cli.app, [*base, "-f", "table"], terminal_width=200)
    assert "metadata" in table.stdout and "https://example.com/0" in table.stdout
    page = tmp_path / "g.html"
    assert runner.invoke(cli.app, [*base, "--html", str(page)]).exit_code == 0
    assert "caption: a &lt;b&gt;red&lt;/b&gt; kite" in page.read_text()


def test_an_update_adds_rows_with_their_values(corpus, tmp_path):
    import shutil

    root, plain, _ = corpus
    shutil.copytree(root / "emb", tmp_path / "emb")
    shutil.copytree(root / "idx", tmp_path / "idx")
    added = make_images(tmp_path / "more", 1, start=20)
    _table(tmp_path / "more", added, ["a lighthouse"], 5)
    embed(embed_config([tmp_path / "more" / "pairs5.csv"], tmp_path / "emb"))
    build_index(IndexConfig(emb_dir=tmp_path / "emb", out_dir=tmp_path / "idx", update=True))
    # The copy was updated from the copied folder: that is its source now, not the original.
    assert load_index(tmp_path / "idx").info.source == str((tmp_path / "emb").resolve())
    where = {"index_dir": tmp_path / "idx"}
    assert _by_image(root, added[0], where)["caption"] == "a lighthouse"
    assert _by_image(root, plain[1], where) == {}
