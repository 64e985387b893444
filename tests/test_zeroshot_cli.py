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

runner = CliRunner()
TINY = "clipkit-tiny:random"


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


def test_table_output_shows_predictions_distribution_metrics_and_confusion(tmp_path):
    result = runner.invoke(
        cli.app, ["zeroshot", str(_tree(tmp_path)), "-m", TINY, "--workers", "0", "--device", "cpu"]
    )
    assert result.exit_code == 0, result.stderr
    for title in ("Predictions", "Label distribution", "Per class", "Confusion matrix"):
        assert title in result.stdout
    assert "Classified 12 images (class tree) into 4 labels with 4 prompts" in result.stderr
    assert "top-1" in result.stderr and "mean per-class recall" in result.stderr


def test_json_and_csv_output(tmp_path):
    tree = _tree(tmp_path)
    args = ["zeroshot", str(tree), "-m", TINY, "--workers", "0", "--device", "cpu", "-k", "2"]
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


def test_outputs_in_the_way_fail_before_any_work(tmp_path):
    (tmp_path / "a_file").write_text("mine")
    for option, target, problem in (
        ("--out", "a_file/p.csv", "a_file is a file, not a folder"),
        ("--html", "a_file/r.html", "a_file is a file, not a folder"),
        ("--html", ".", "is a folder, not a file name"),
    ):
        result = runner.invoke(
            cli.app,
            [
                "zeroshot",
                str(tmp_path / "no-such-data"),
                "--labels",
                "a,b",
                option,
                str(tmp_path / target),
            ],
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
    assert result.exit_code == 1
    assert "Error: No labels given" in result.stderr and "Hint:" in result.stderr
