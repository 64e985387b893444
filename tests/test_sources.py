"""Discovery of what to embed: the order and de-duplication of items, and input tables kept as
Arrow columns (pass-through cells read per row, across the blocks a CSV reader makes)."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pytest

from clipkit.errors import InputError
from clipkit.inputs.sources import Item, SourceOptions, TableRow, _sorted_unique, discover
from clipkit.store import InputTable, read_table
from tests.helpers import TINY, make_images


def test_items_are_sorted_by_uri_then_kind_and_the_last_repeat_wins():
    items = [
        Item("b", "text", text="1"),
        Item("a", "text", text="2"),
        Item("a", "image", "a"),
        Item("b", "text", text="3"),
        Item("a", "image", "a", meta={"n": 1}),
    ]
    kept = _sorted_unique(items)
    assert [(item.uri, item.kind) for item in kept] == [
        ("a", "image"),
        ("a", "text"),
        ("b", "text"),
    ]
    assert kept[0].meta == {"n": 1} and kept[2].text == "3"  # as a dict by (kind, uri) keeps
    assert _sorted_unique([]) == []


def test_a_table_row_gives_its_pass_through_cells(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("filepath,caption,label,score\nimgs/a.jpg,a dog,dog,0.5\n,a cat,,\n")
    items = discover([table], SourceOptions()).items
    # Row 0's image passes on its caption too, and each caption its image's uri (the path
    # resolved as the image row's, so the two join); row 1 has no image. (An empty CSV string
    # cell is "", an empty number cell null, as pyarrow reads them.)
    by_uri = {(item.kind, item.uri): item for item in items}
    image_uri = str(tmp_path / "imgs" / "a.jpg")
    image = by_uri[("image", image_uri)]
    assert dict(image.meta) == {"label": "dog", "score": 0.5, "caption": "a dog"}
    assert dict(by_uri[("text", f"{table}#row=0")].meta) == {
        "label": "dog",
        "score": 0.5,
        "filepath": image_uri,
    }
    assert dict(by_uri[("text", f"{table}#row=1")].meta) == {
        "label": "",
        "score": None,
        "filepath": "",
    }
    assert by_uri[("text", f"{table}#row=1")].text == "a cat"
    assert len(items) == 3
    meta = image.meta
    assert isinstance(meta, TableRow) and list(meta) == ["label", "score", "caption"]
    assert meta.get("filepath", "-") == "-"  # its own path is its uri, not passed on
    with pytest.raises(KeyError):
        meta["filepath"]


def test_a_table_without_pass_through_columns_gives_no_meta(tmp_path):
    table = tmp_path / "t.jsonl"
    table.write_text('{"text": "one"}\n{"text": "two"}\n')
    assert [item.meta for item in discover([table], SourceOptions()).items] == [None, None]


def test_a_table_with_a_header_and_no_rows_holds_nothing_to_embed(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("filepath,caption\n")
    with pytest.raises(InputError, match="holds nothing to embed"):
        discover([table], SourceOptions())


def test_cells_are_found_across_the_blocks_of_a_chunked_table():
    chunks = [
        pa.record_batch({"x": [10 * c + i for i in range(3)], "s": [f"{c}{i}" for i in range(3)]})
        for c in range(4)
    ]
    table = InputTable(Path("t.parquet"), pa.Table.from_batches(chunks))
    assert table.rows == 12 and table.columns == ["x", "s"]
    assert [table.cell("x", row) for row in range(12)] == [10 * (r // 3) + r % 3 for r in range(12)]
    assert table.values("s") == [f"{r // 3}{r % 3}" for r in range(12)]


def test_a_big_csv_read_in_blocks_keeps_every_row_in_order(tmp_path):
    # pyarrow's CSV reader makes a chunk per 1 MB block: 60,000 rows make several.
    path = tmp_path / "big.csv"
    path.write_text("caption,n\n" + "".join(f"caption number {i:07d},{i}\n" for i in range(60_000)))
    table = read_table(path)
    assert table.rows == 60_000
    assert [table.cell("n", row) for row in (0, 17_123, 41_999, 59_999)] == [
        0,
        17_123,
        41_999,
        59_999,
    ]
    assert table.cell("caption", 59_999) == "caption number 0059999"


def test_image_cells_as_relative_paths_home_paths_and_urls(tmp_path, monkeypatch):
    from clipkit.inputs.filenames import table_path

    table = tmp_path / "sub" / "t.csv"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert table_path("imgs/a.jpg", table) == str(tmp_path / "sub" / "imgs" / "a.jpg")
    assert table_path("/abs/a.jpg", table) == "/abs/a.jpg"
    assert table_path("~/a.jpg", table) == str(tmp_path / "home" / "a.jpg")
    assert table_path("file:///data/my%20photo.jpg", table) == "/data/my photo.jpg"
    assert table_path("file://localhost/data/a.jpg", table) == "/data/a.jpg"
    for url in (
        "https://example.com/a.jpg",
        "s3://bucket/a.jpg",
        "HTTP://X/a.png",
        "file://otherhost/a.jpg",
    ):
        assert table_path(url, table) == url  # kept as written, never joined to the folder


def test_urls_in_a_table_are_skipped_with_a_reason_and_file_urls_are_read(tmp_path):
    from clipkit.embed import EmbedConfig, embed
    from clipkit.inputs.filenames import URL_NOT_READ
    from clipkit.inputs.pairs import read_pairs
    from clipkit.train.data import verify_images

    (local,) = make_images(tmp_path / "imgs", 1)
    table = tmp_path / "t.csv"
    table.write_text(f"url,caption\nhttps://example.com/a.jpg,a dog\n{local.as_uri()},a cat\n")
    result = embed(
        EmbedConfig(
            sources=(str(table),),
            out_dir=tmp_path / "out",
            model=TINY,
            device="cpu",
            workers=0,
            image_column="url",
        )
    )
    assert result.embedded == 3  # two captions and the file:// image
    assert result.failures == (
        (
            "https://example.com/a.jpg",
            "read",
            "a URL: clipkit reads local files (download them first, e.g. with img2dataset)",
        ),
    )
    pairs = read_pairs(str(table), image_column="url")  # what train and audit read
    assert [pair.image for pair in pairs.pairs] == ["https://example.com/a.jpg", str(local)]
    good, skipped = verify_images(pairs.pairs, image_size=8, workers=0)
    assert [pair.image for pair in good] == [str(local)]
    assert skipped == [("https://example.com/a.jpg", "read", URL_NOT_READ)]


def test_unreadable_folders_and_unsupported_images_are_listed_not_passed_over(
    tmp_path, monkeypatch
):
    """#24 D10: a subfolder without read permission and `.heic` photos were skipped without
    a word, by embed and by train's folder pairs."""
    import errno
    import os

    from clipkit.inputs.pairs import _folder_pairs

    make_images(tmp_path / "photos", 2)
    (tmp_path / "photos" / "img0000.txt").write_text("a caption")
    (tmp_path / "photos" / "IMG_1234.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic")
    private = tmp_path / "photos" / "private"
    private.mkdir()
    make_images(private, 1)
    real_scandir = os.scandir

    def scandir(path=".", *args):
        # as chmod 000 does for anyone but root (rmtree, cleaning tmp_path, passes a descriptor)
        if not isinstance(path, int) and Path(path) == private:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path, *args)

    monkeypatch.setattr(os, "scandir", scandir)
    found = discover([tmp_path / "photos"], SourceOptions())
    assert sorted(found.failures) == [
        (
            str(tmp_path / "photos" / "IMG_1234.HEIC"),
            "read",
            ".heic images are not decoded by clipkit: convert them to JPEG or PNG",
        ),
        (str(private), "read", "folder not readable: Permission denied"),
    ]
    images = [item.uri for item in found.items if item.kind == "image"]
    assert len(images) == 2 and all(str(private) not in uri for uri in images)
    pairs, skipped = _folder_pairs(tmp_path / "photos", include_hidden=False)
    assert len(pairs) == 1
    assert {(uri, reason) for uri, _, reason in skipped} >= {
        (
            str(tmp_path / "photos" / "IMG_1234.HEIC"),
            ".heic images are not decoded by clipkit: convert them to JPEG or PNG",
        ),
        (str(private), "folder not readable: Permission denied"),
    }
    with pytest.raises(InputError, match="heic images are not decoded"):
        discover([tmp_path / "photos" / "IMG_1234.HEIC"], SourceOptions())


@pytest.mark.parametrize(
    ("column", "values", "kind"),
    [
        ("filepath", [b"img/t0.png"], "binary"),
        ("caption", [b"a red circle"], "binary"),
        ("caption", [[1, 2]], "list<element: int64>"),
        ("filepath", [7], "int64"),
    ],
)
def test_image_and_text_columns_of_another_type_are_refused_by_name(tmp_path, column, values, kind):
    """#24 D11: a bytes path became `tables/b'img/t0.png'`, a bytes caption was embedded as
    "b'a red circle'", a list caption as the text "[1, 2]", and trained on."""
    import pyarrow.parquet as pq

    from clipkit.inputs.pairs import read_pairs

    columns = {"filepath": ["img/t0.png"], "caption": ["a red circle"], column: values}
    pq.write_table(pa.table(columns), tmp_path / "t.parquet")
    what = "image paths" if column == "filepath" else "texts"
    expected = f"Column '{column}' of {tmp_path / 't.parquet'} holds {kind} values, not {what}"
    with pytest.raises(InputError, match=re.escape(expected)) as refused:
        discover([tmp_path / "t.parquet"], SourceOptions())
    assert refused.value.hint == f"Store {what} as strings (UTF-8 text), or name another column."
    with pytest.raises(InputError, match=re.escape(expected)):
        read_pairs(tmp_path / "t.parquet")


def test_numbers_a_csv_reader_guessed_in_a_caption_column_are_read_as_text(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("filepath,caption\nimgs/a.jpg,42\nimgs/b.jpg,7\n")
    texts = [item.text for item in discover([table], SourceOptions()).items if item.kind == "text"]
    assert texts == ["42", "7"]
