"""Pair datasets for train and audit: sidecar folders and tables, several captions per image,
and every unusable pair skipped and listed; missing columns fail before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clipkit.errors import InputError
from clipkit.inputs.pairs import Pair, read_pairs
from tests.helpers import make_images


def test_folder_with_sidecars(tmp_path):
    images = make_images(tmp_path / "d" / "sub", 4)
    images[0].with_suffix(".txt").write_text("a red square\n\n  a crimson block  \n")
    images[1].with_suffix(".txt").write_text("a blue circle")
    images[2].with_suffix(".txt").write_text("  \n\n")  # no caption in it
    (tmp_path / "d" / "notes.txt").write_text("not a sidecar of anything")
    make_images(tmp_path / "d" / ".hidden", 1)
    result = read_pairs(tmp_path / "d")
    assert result.pairs == (
        Pair(str(images[0]), ("a red square", "a crimson block")),
        Pair(str(images[1]), ("a blue circle",)),
    )
    assert sorted((Path(u).name, reason) for u, _, reason in result.skipped) == [
        (images[2].name, f"{images[2].stem}.txt holds no caption"),
        (images[3].name, f"no caption file {images[3].stem}.txt"),
    ]


def test_non_utf8_sidecar_is_decoded_with_replacement(tmp_path):
    (image,) = make_images(tmp_path, 1)
    image.with_suffix(".txt").write_bytes(b"caf\xe9 on a table")
    assert read_pairs(tmp_path).pairs[0].captions == ("caf\ufffd on a table",)


def test_table_groups_captions_per_image_and_lists_skips(tmp_path):
    make_images(tmp_path / "imgs", 2)
    rows = [
        {"filepath": "imgs/img0000.jpg", "caption": "first caption"},
        {"filepath": "imgs/img0001.png", "caption": ""},
        {"filepath": "imgs/img0000.jpg", "caption": "second caption"},
        {"filepath": "", "caption": "caption without image"},
        {"filepath": "imgs/img0001.png", "caption": "  kept  "},
    ]
    table = tmp_path / "pairs.jsonl"
    table.write_text("\n".join(json.dumps(r) for r in rows))
    result = read_pairs(table)
    assert result.pairs == (
        Pair(str(tmp_path / "imgs" / "img0000.jpg"), ("first caption", "second caption")),
        Pair(str(tmp_path / "imgs" / "img0001.png"), ("kept",)),
    )
    assert [reason for _, _, reason in result.skipped] == [
        "empty caption in row 1",
        "no image path",
    ]


def test_table_column_options(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("picture,words\n/abs/a.jpg,hello\n")
    result = read_pairs(table, image_column="picture", text_column="words")
    assert result.pairs == (Pair("/abs/a.jpg", ("hello",)),)


@pytest.mark.parametrize(
    ("header", "missing"), [("filepath,label", "caption"), ("label,caption", "image")]
)
def test_missing_columns_fail_before_any_work(tmp_path, header, missing):
    table = tmp_path / "t.csv"
    table.write_text(f"{header}\nx,y\n")
    with pytest.raises(InputError, match=f"has no {missing} column"):
        read_pairs(table)


def test_bad_sources(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_pairs(tmp_path / "nope")
    (tmp_path / "x.md").write_text("hi")
    with pytest.raises(InputError, match="neither a folder"):
        read_pairs(tmp_path / "x.md")
