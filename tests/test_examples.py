"""Every script in examples/ runs on tiny generated data (offline, built-in model)."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import make_images

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.e2e
def test_embed_and_search_example(tmp_path):
    make_images(tmp_path / "photos", 6)
    out = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "embed_and_search.py"),
            str(tmp_path / "photos"),
            "--work",
            str(tmp_path / "work"),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "embedded 6, skipped 0" in out.stdout
    assert "index Flat: 6 rows" in out.stdout
    # The image query finds itself first.
    image_block = out.stdout.split("image:")[1]
    assert "1. 1.000" in image_block and "img0000.jpg" in image_block.splitlines()[1]


def _run(script: str, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_every_example_is_short_and_documented():
    for script in EXAMPLES.glob("*.py"):
        source = script.read_text()
        assert len(source.splitlines()) <= 60, script.name
        assert source.startswith('"""') and "python examples/" in source, script.name


@pytest.mark.e2e
def test_finetune_csv_example(shapes, tmp_path):
    table = tmp_path / "pairs.csv"
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filepath", "caption"])
        for image in sorted((shapes / "data").glob("*.png"))[:60]:
            writer.writerow([str(image), image.with_suffix(".txt").read_text().strip()])
    stdout = _run("finetune_csv.py", str(table), str(tmp_path / "run"), "--epochs", "1")
    # 60 pairs, 10 % held out for validation, batch 32: one step per epoch
    assert "trained on 54 pairs (0 skipped), 1 steps" in stdout
    assert "epoch 1: validation image->text recall@5" in stdout
    assert "text embeddings (2, 128)" in stdout  # clipkit-tiny's embed dim
    assert (tmp_path / "run" / "best.safetensors").is_file()


@pytest.mark.e2e
def test_audit_and_clean_example(shapes, finished_run, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(shapes / "data", data)
    # swap two captions that differ in colour, the attribute the 4-epoch model knows best
    first = data / "shape00003.txt"
    colour = first.read_text().split()[2]
    second = next(p for p in sorted(data.glob("*.txt")) if p.read_text().split()[2] != colour)
    texts = first.read_text(), second.read_text()
    first.write_text(texts[1])
    second.write_text(texts[0])
    model = str(Path(finished_run[1].run_dir) / "best.safetensors")
    stdout = _run("audit_and_clean.py", str(data), str(tmp_path / "clean.csv"), "--model", model)
    with (tmp_path / "clean.csv").open() as handle:
        kept = list(csv.DictReader(handle))
    with (tmp_path / "clean.flagged.csv").open() as handle:
        flagged = list(csv.DictReader(handle))
    assert len(kept) + len(flagged) == 200
    assert set(kept[0]) == {"image", "caption"}
    assert not {row["image"] for row in kept} & {row["image"] for row in flagged}
    # both swapped pairs are flagged, each suggesting a caption of its true colour
    by_stem = {Path(row["image"]).stem: row for row in flagged}
    for caption_file, true_text in zip((first, second), texts, strict=True):
        row = by_stem[caption_file.stem]
        assert row["caption"] != true_text.strip()
        assert row["suggested_caption"].split()[2] == true_text.split()[2]
    assert f"{len(flagged)} flagged" in stdout


@pytest.mark.e2e
def test_zeroshot_folder_example(shapes, finished_run, tmp_path):
    model = str(Path(finished_run[1].run_dir) / "best.safetensors")
    out = tmp_path / "predictions.csv"
    stdout = _run(
        "zeroshot_folder.py",
        str(shapes / "classes"),
        "red,green,blue,yellow",
        str(out),
        "--model",
        model,
    )
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 32 and {row["label"] for row in rows} <= {"red", "green", "blue", "yellow"}
    assert "32 images, 4 labels, 0 skipped" in stdout
    counts = {
        line.split(":")[0].strip(): int(line.split(":")[1])
        for line in stdout.splitlines()
        if line.startswith("  ")
        and line.split(":")[0].strip() in ("red", "green", "blue", "yellow")
    }
    assert sum(counts.values()) == 32
