"""``clipkit audit --write-clean / --write-flagged``: a table loses exactly its flagged rows and
keeps its columns and skipped rows; a folder becomes an image/caption table that trains; image
paths still open from where the file is written; outputs are checked before any work."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from clipkit import cli
from tests.helpers import TINY

runner = CliRunner()
COLOURS = [(230, 20, 20), (20, 200, 30), (20, 30, 220), (240, 220, 10), (150, 20, 160), (0, 0, 0)]


def _images(folder: Path) -> list[str]:
    folder.mkdir(parents=True)
    names = []
    for i, colour in enumerate(COLOURS):
        Image.new("RGB", (40, 40), colour).save(folder / f"{i}.png")
        names.append(f"{i}.png")
    return names


@pytest.fixture
def table(tmp_path):
    """A CSV in data/ with relative image paths, an extra column, two captions for image 0,
    and a row whose image is unreadable."""
    data = tmp_path / "data"
    names = _images(data / "img")
    (data / "img" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n nope")
    rows = [(f"img/{name}", f"a picture number {i}", f"id-{i}") for i, name in enumerate(names)]
    rows.insert(1, ("img/0.png", "another caption of zero", "id-0b"))
    rows.append(("img/broken.png", "a broken picture", "id-broken"))
    path = data / "pairs.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption", "source_id"])
        writer.writerows(rows)
    return path


def _audit(data, tmp_path, *extra):
    report = tmp_path / "report.json"
    result = runner.invoke(
        cli.app,
        ["audit", str(data), "-m", TINY, "--workers", "0", "-o", str(report), "-f", "json"]
        + list(extra),
    )
    assert result.exit_code == 0, result.output
    pairs = json.loads(report.read_text())["pairs"]
    return result, pairs


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_table_loses_exactly_its_flagged_rows(table, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    clean, flagged = out / "clean.csv", out / "flagged.csv"
    # a raw threshold above any cosine flags every pair; --max-flags keeps the 3 worst
    result, pairs = _audit(
        table, tmp_path, "--threshold", "1.0", "--max-flags", "3",
        "--write-clean", str(clean), "--write-flagged", str(flagged),
    )  # fmt: skip
    bad = {(Path(p["image"]).name, p["caption"]) for p in pairs if p["flagged"]}
    assert len(bad) == 3

    original = _read_csv(table)
    kept = _read_csv(clean)
    assert list(kept[0]) == ["image", "caption", "source_id"]
    expected = [r for r in original if (Path(r["image"]).name, r["caption"]) not in bad]
    assert [r["source_id"] for r in kept] == [r["source_id"] for r in expected]
    assert "id-broken" in {r["source_id"] for r in kept}  # skipped by the audit: kept
    # the paths open from out/, where the file now is
    for row in kept:
        assert (clean.parent / row["image"]).resolve() == (table.parent / "img" / Path(
            row["image"]).name).resolve()  # fmt: skip
    assert "1 of them skipped by the audit" in " ".join(result.stderr.split())

    shown = _read_csv(flagged)
    assert {(Path(r["image"]).name, r["caption"]) for r in shown} == bad
    assert list(shown[0])[:3] == ["image", "caption", "source_id"]
    assert {"probability", "cosine", "suggested_caption"} <= set(shown[0])
    worst_first = [float(r["cosine"]) for r in shown]
    assert worst_first == sorted(worst_first)  # --threshold ranks by cosine, lowest first


def test_nothing_flagged_writes_the_whole_table_and_an_empty_one_with_its_header(table, tmp_path):
    clean, flagged = tmp_path / "clean.parquet", tmp_path / "flagged.csv"
    _audit(
        table, tmp_path, "--threshold", "-1.0",
        "--write-clean", str(clean), "--write-flagged", str(flagged),
    )  # fmt: skip
    assert pq.read_table(clean).num_rows == len(_read_csv(table))
    header = flagged.read_text().splitlines()
    assert header[0].startswith("image,caption,source_id,probability")
    assert len(header) == 1


def test_a_folder_becomes_an_image_caption_table_that_trains(tmp_path):
    folder = tmp_path / "pairs"
    for i, name in enumerate(_images(folder)):
        (folder / name).with_suffix(".txt").write_text(f"a picture number {i}")
    clean = tmp_path / "elsewhere" / "clean.jsonl"
    clean.parent.mkdir()
    _, pairs = _audit(
        folder, tmp_path, "--threshold", "1.0", "--max-flags", "2", "--write-clean", str(clean)
    )
    rows = [json.loads(line) for line in clean.read_text().splitlines()]
    assert len(rows) == len(COLOURS) - 2
    assert all(set(row) == {"image", "caption"} for row in rows)
    assert all((clean.parent / row["image"]).is_file() for row in rows)
    flagged = {Path(p["image"]).name for p in pairs if p["flagged"]}
    assert not flagged & {Path(row["image"]).name for row in rows}

    from clipkit.inputs.pairs import read_pairs

    assert len(read_pairs(clean).pairs) == len(rows)  # what `clipkit train` reads


def test_a_column_named_like_an_audit_column_keeps_its_name(tmp_path):
    data = tmp_path / "data"
    names = _images(data)
    path = data / "pairs.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption", "cosine"])
        writer.writerows((name, f"caption {i}", "mine") for i, name in enumerate(names))
    flagged = tmp_path / "flagged.csv"
    _audit(path, tmp_path, "--threshold", "1.0", "--write-flagged", str(flagged))
    rows = _read_csv(flagged)
    assert {row["cosine"] for row in rows} == {"mine"}
    assert all(-1 <= float(row["audit_cosine"]) <= 1 for row in rows)


@pytest.mark.parametrize(
    ("option", "target", "message"),
    [
        ("--write-clean", "clean.txt", "cannot tell the table format"),
        ("--write-flagged", "flagged.json", "cannot tell the table format"),
        ("--write-clean", "a-folder", "is a folder"),
    ],
)
def test_outputs_are_checked_before_any_work(table, tmp_path, option, target, message):
    (tmp_path / "a-folder.csv").mkdir()
    path = tmp_path / (target + ".csv" if target == "a-folder" else target)
    result = runner.invoke(cli.app, ["audit", str(table), "-m", TINY, option, str(path)])
    assert result.exit_code == 1, result.output
    assert message in " ".join(result.stderr.split())
