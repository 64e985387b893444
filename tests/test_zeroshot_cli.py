"""``clipkit zeroshot`` on the command line: options reach the service, the three stdout
formats, the predictions file and HTML report, ``--strict``, and errors as Error/Hint."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from clipkit import cli
from clipkit.inputs.synthetic import write_class_tree
from clipkit.zeroshot import run as zeroshot_module
from tests.helpers import TINY, make_images

runner = CliRunner()


def test_options_reach_the_service(monkeypatch, tmp_path):
    seen = {}

    def fake(config, progress=None):
        seen["config"] = config
        raise zeroshot_module.InputError("stop here", "a hint")

    monkeypatch.setattr(zeroshot_module, "zeroshot", fake)
    result = runner.invoke(
        cli.app,
        [
            "zeroshot",
            "imgs",
            "--labels",
            "cat,dog",
            "--templates",
            "openai",
            "-m",
            TINY,
            "-k",
            "3",
            "--calibrate",
            "known/",
            "--false-reject",
            "0.1",
            "--batch-size",
            "8",
            "--workers",
            "0",
            "--device",
            "cpu",
            "--include-hidden",
        ],
    )
    assert result.exit_code == 1 and "Error: stop here" in result.stderr
    config = seen["config"]
    assert (config.images, config.labels, config.templates, config.model, config.k) == (
        Path("imgs"),
        "cat,dog",
        "openai",
        TINY,
        3,
    )
    assert (config.calibrate, config.false_reject, config.batch_size) == (Path("known/"), 0.1, 8)
    assert config.workers == 0 and config.device == "cpu" and config.include_hidden


def _tree(tmp_path: Path) -> Path:
    write_class_tree(tmp_path / "tree", 3)
    return tmp_path / "tree"


def test_table_output_shows_summary_distribution_metrics_and_confusion(tmp_path):
    args = ["zeroshot", str(_tree(tmp_path)), "--class-tree", "-m", TINY, "--workers", "0"]
    result = runner.invoke(cli.app, [*args, "--device", "cpu"])
    assert result.exit_code == 0, result.stderr
    for title in ("Label distribution", "Per class", "Confusion matrix"):
        assert title in result.stdout
    assert "Predictions" not in result.stdout and "--show-rows" in result.stderr
    rows = runner.invoke(cli.app, [*args, "--device", "cpu", "--show-rows"])
    assert rows.exit_code == 0 and "Predictions" in rows.stdout and "red" in rows.stdout
    assert "--show-rows" not in rows.stderr
    assert "Classified 12 images (class tree) into 4 labels with 4 prompts" in result.stderr
    assert "top-1" in result.stderr and "mean per-class recall" in result.stderr


def test_json_and_csv_output(tmp_path):
    tree = _tree(tmp_path)
    args = ["zeroshot", str(tree), "--class-tree", "-m", TINY, "--workers", "0", "-k", "2"]
    as_json = runner.invoke(cli.app, [*args, "--format", "json"])
    assert as_json.exit_code == 0, as_json.stderr
    payload = json.loads(as_json.stdout)
    assert payload["labels"] == ["blue", "green", "red", "yellow"]
    assert len(payload["predictions"]) == 12 and len(payload["predictions"][0]["top"]) == 2
    assert payload["metrics"]["images"] == 12
    as_csv = runner.invoke(cli.app, [*args, "--format", "csv"])
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert len(rows) == 12 and rows[0]["target"] == "blue" and "probability_2" in rows[0]


def test_out_and_html_are_written_and_predictions_leave_stdout(tmp_path):
    tree = _tree(tmp_path)
    result = runner.invoke(
        cli.app,
        [
            "zeroshot",
            str(tree),
            "--class-tree",
            "-m",
            TINY,
            "--workers",
            "0",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "p.parquet"),
            "--html",
            str(tmp_path / "r.html"),
        ],
    )
    assert result.exit_code == 0, result.stderr
    assert "Predictions" not in result.stdout and "Label distribution" in result.stdout
    assert (tmp_path / "p.parquet").is_file() and (tmp_path / "r.html").is_file()
    assert (tmp_path / "r.confusion.png").is_file()
    assert "Wrote 12 predictions" in result.stderr


def test_bad_out_suffix_fails_before_any_work(tmp_path):
    result = runner.invoke(
        cli.app, ["zeroshot", "missing/", "--labels", "a,b", "--out", str(tmp_path / "p.xlsx")]
    )
    assert result.exit_code == 1 and "suffix" in result.stderr
    assert "Hint:" in result.stderr


def test_outputs_in_the_way_fail_before_any_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # short relative paths: a long one is wrapped mid-word at 80
    (tmp_path / "a_file").write_text("mine")
    for option, target, problem in (
        ("--out", "a_file/p.csv", "a_file is a file, not a folder"),
        ("--html", "a_file/r.html", "a_file is a file, not a folder"),
        ("--html", ".", "is a folder, not a file name"),
    ):
        result = runner.invoke(
            cli.app, ["zeroshot", "no-such-data", "--labels", "a,b", option, target]
        )
        message = " ".join(result.stderr.split())
        assert result.exit_code == 1 and problem in message
        assert "no-such-data" not in message  # refused before the images were even looked at


def test_skipped_images_are_listed_and_strict_exits_1(tmp_path):
    Image.new("RGB", (32, 32), (250, 0, 0)).save(tmp_path / "ok.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    args = ["zeroshot", str(tmp_path), "--labels", "red,blue", "-m", TINY, "--workers", "0"]
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 0, result.stderr
    assert "skipped 1" in result.stderr and "broken.jpg" in result.stderr
    assert runner.invoke(cli.app, [*args, "--strict"]).exit_code == 1


def test_labels_with_rich_markup_are_printed_literally(tmp_path):
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    result = runner.invoke(
        cli.app,
        ["zeroshot", str(tmp_path), "--labels", "[bold]x[/bold],y", "-m", TINY, "--workers", "0"],
    )
    assert result.exit_code == 0, result.stderr
    assert "[bold]x[/bold]" in result.stdout


def test_errors_are_error_and_hint(tmp_path):
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    result = runner.invoke(cli.app, ["zeroshot", str(tmp_path), "-m", TINY])
    assert result.exit_code == 2  # a usage error: nothing to classify into
    assert "Error: No labels given" in result.stderr and "Hint:" in result.stderr


def _albums(tmp_path: Path) -> Path:
    """A new user's photos: in album subfolders that are not classes."""
    for album, start in (("2024-summer", 0), ("misc", 3), ("screenshots", 6)):
        make_images(tmp_path / "photos" / album, 3, start=start)
    return tmp_path / "photos"


def test_albums_without_labels_are_a_usage_error_that_says_how_to_give_them(tmp_path):
    photos = _albums(tmp_path)
    result = runner.invoke(cli.app, ["zeroshot", str(photos), "-m", TINY, "--device", "cpu"])
    assert result.exit_code == 2, result.stderr
    said = " ".join(result.stderr.split())  # as one line, whatever the terminal's wrapping
    assert "No labels given" in said and "(2024-summer, misc, screenshots)" in said
    assert "--labels" in said and "--class-tree" in said
    assert "accuracy" not in said and "top-1" not in said


def test_albums_with_labels_have_no_invented_truth_in_any_output(tmp_path):
    photos = _albums(tmp_path)
    args = ["zeroshot", str(photos), "--labels", "cat,dog,beach", "-m", TINY, "--workers", "0"]
    out, html = tmp_path / "p.csv", tmp_path / "r.html"
    result = runner.invoke(
        cli.app, [*args, "--device", "cpu", "--out", str(out), "--html", str(html)]
    )
    assert result.exit_code == 0, result.stderr
    assert "Classified 9 images (folder)" in result.stderr and "top-1" not in result.stderr
    assert "Per class" not in result.stdout and "Confusion" not in result.stdout
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 9 and all(row["target"] == "" for row in rows)
    page = html.read_text()
    assert "true:" not in page and "misc" in page  # the path is shown, never as a class
    as_json = runner.invoke(cli.app, [*args, "--device", "cpu", "--format", "json"])
    payload = json.loads(as_json.stdout)
    assert payload["metrics"] is None
    assert all(p["target"] is None for p in payload["predictions"])
