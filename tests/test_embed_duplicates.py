"""``clipkit embed --report-duplicates FILE``: every group of identical content in the folder
(images and texts, this run's and earlier runs'), one row per copy, largest groups first."""

from __future__ import annotations

import csv
import json
import shutil

from PIL import Image
from typer.testing import CliRunner

from clipkit import cli
from tests.helpers import embed_args

runner = CliRunner()


def _embed(sources, out, report):
    result = runner.invoke(cli.app, embed_args(sources, out, "--report-duplicates", str(report)))
    assert result.exit_code == 0, result.output
    return result


def test_groups_of_identical_images_and_texts_are_listed(tmp_path):
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    Image.new("RGB", (32, 32), (200, 10, 10)).save(photos / "a.png")
    Image.new("RGB", (32, 32), (10, 10, 200)).save(photos / "unique.png")
    shutil.copy(photos / "a.png", photos / "b.png")
    shutil.copy(photos / "a.png", photos / "sub" / "c.png")
    (photos / "note1.txt").write_text("the same words")
    (photos / "note2.txt").write_text("the same words")
    (photos / "note3.txt").write_text("other words")
    dups = tmp_path / "dups.csv"
    emb = tmp_path / "emb"
    result = _embed(photos, emb, dups)
    assert "2 groups of identical content (3 extra copies)" in " ".join(result.stderr.split())

    with dups.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["group", "copies", "kind", "id", "uri", "path"]
    groups: dict[str, set[str]] = {}
    for row in rows:
        groups.setdefault(row["group"], set()).add(
            row["uri"].replace("\\", "/").split("photos/")[-1]
        )
    assert groups == {"1": {"a.png", "b.png", "sub/c.png"}, "2": {"note1.txt", "note2.txt"}}
    assert {row["kind"] for row in rows if row["group"] == "1"} == {"image"}
    assert {row["copies"] for row in rows if row["group"] == "1"} == {"3"}
    assert len({row["id"] for row in rows if row["group"] == "1"}) == 1

    # a later run adds a copy: the folder's groups, not only the run's, are listed
    shutil.copy(photos / "unique.png", photos / "unique-copy.png")
    again = tmp_path / "again.jsonl"
    _embed(photos, emb, again)
    listed = [json.loads(line) for line in again.read_text().splitlines()]
    assert [row["copies"] for row in listed] == [3, 3, 3, 2, 2, 2, 2]


def test_no_duplicates_writes_a_header_only(tmp_path):
    (tmp_path / "a.txt").write_text("one")
    (tmp_path / "b.txt").write_text("two")
    dups = tmp_path / "dups.csv"
    _embed([tmp_path / "a.txt", tmp_path / "b.txt"], tmp_path / "emb", dups)
    assert dups.read_text().splitlines() == ["group,copies,kind,id,uri,path"]


def test_a_report_we_cannot_write_fails_before_the_work(tmp_path):
    (tmp_path / "a.txt").write_text("one")
    result = runner.invoke(
        cli.app,
        embed_args(
            tmp_path / "a.txt", tmp_path / "emb", "--report-duplicates", str(tmp_path / "dups.xlsx")
        ),
    )
    assert result.exit_code == 1
    assert "Cannot tell the format" in result.stderr
    assert not (tmp_path / "emb").exists()
