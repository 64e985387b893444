"""`clipkit quickstart`: every step on generated data, re-runs that reuse, reports in a browser.

The tests of a quickstart run are end-to-end (``e2e``: ``make test-all`` and CI run them): the
run trains, exports, embeds, indexes, searches, classifies and audits for real (about 45 s);
each step has its own tests in the default suite."""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from clipkit import cli
from clipkit.errors import InputError
from clipkit.quickstart.run import QUERIES, QuickstartConfig, _write_once, quickstart
from clipkit.store import read_stamp, read_vectors
from tests.browser import is_blank, render

STEPS = ["data", "train", "embed + index", "search", "zeroshot", "audit"]
SMALL = {
    "train_pairs": 128,
    "val_pairs": 40,
    "per_class": 6,
    "epochs": 4,
    "workers": 0,
    "device": "cpu",
}


@pytest.fixture(scope="module")
def small_run_cache(tmp_path_factory):
    """The ONNX cache that the small run's index step fills with its model's export."""
    return tmp_path_factory.mktemp("quickstart-onnx-cache")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, small_run_cache):
    folder = tmp_path_factory.mktemp("quickstart")
    config = QuickstartConfig(folder=folder, **SMALL)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CLIPKIT_ONNX_CACHE", str(small_run_cache))
        return config, quickstart(config)


@pytest.fixture(autouse=True)
def small_run_s_cache(request, monkeypatch):
    """A test of the small run sees the export it left (each test has an empty cache, and an
    index step finding none would export the model again: 20 s)."""
    if "small_run" in request.fixturenames:
        cache = request.getfixturevalue("small_run_cache")
        monkeypatch.setenv("CLIPKIT_ONNX_CACHE", str(cache))


@pytest.mark.e2e  # the whole workflow, every step for real
def test_every_step_runs_and_leaves_its_artifacts(small_run):
    config, result = small_run
    assert [step.name for step in result.steps] == STEPS
    assert not any(step.reused for step in result.steps)
    for step in result.steps:
        assert step.summary and step.seconds >= 0
        for artifact in step.artifacts:
            assert Path(artifact).exists(), (step.name, artifact)
    folder = Path(config.folder)
    model = Path(result.steps[1].artifacts[0])
    assert model.parent == folder / "run" and model.suffix == ".safetensors"
    vectors = read_vectors(folder / "embeddings", "image")
    assert len(vectors.ids) == 40  # the validation images, embedded with the trained model
    assert read_stamp(folder / "embeddings").spec == str(model)
    # The index step leaves the model's ONNX export in the cache, so the next search is fast
    export = Path(result.steps[2].artifacts[-1])
    manifest = json.loads((export / "clipkit-onnx.json").read_text())
    assert manifest["fingerprint"] == read_stamp(folder / "embeddings").fingerprint
    assert "exported to ONNX for fast search" in result.steps[2].summary
    reports = sorted(p.name for p in (folder / "reports").iterdir())
    assert reports == [
        "audit.csv",
        "audit.histogram.png",
        "audit.html",
        "index.html",
        "search.html",
        "zeroshot.confusion.png",
        "zeroshot.csv",
        "zeroshot.html",
    ]
    swapped = json.loads((folder / "data" / "audit-swapped.json").read_text())
    assert len(swapped) == 4  # 10 % of 40, in pairs
    for name in swapped:  # the audit copy really carries another image's caption there
        copy, original = folder / "data" / "audit" / name, folder / "data" / "val" / name
        assert copy.with_suffix(".txt").read_text() != original.with_suffix(".txt").read_text()


@pytest.mark.e2e  # the whole workflow, every step for real
def test_training_and_zero_shot_beat_chance(small_run):
    _, result = small_run
    steps = {step.name: step for step in result.steps}
    for name in ("train", "zeroshot"):
        assert steps[name].score > steps[name].chance, steps[name].summary
    assert steps["zeroshot"].chance == 0.25  # four colours
    assert steps["train"].chance == 1 / 40  # the true caption first among 40, by luck


@pytest.mark.e2e  # the whole workflow, every step for real
def test_rerun_reuses_data_model_and_embeddings(small_run):
    config, first = small_run
    folder = Path(config.folder)
    model = Path(first.steps[1].artifacts[0])
    trained_at = model.stat().st_mtime_ns
    again = quickstart(config)
    reused = {step.name: step.reused for step in again.steps}
    assert reused == {
        "data": True,
        "train": True,
        "embed + index": True,
        "search": False,
        "zeroshot": False,
        "audit": False,
    }
    assert model.stat().st_mtime_ns == trained_at
    assert again.steps[1].score == first.steps[1].score  # the run's recorded evaluation
    for name in ("search", "zeroshot", "audit"):  # same model, same data: same answers
        assert again.steps[STEPS.index(name)].score == first.steps[STEPS.index(name)].score
    assert not list(folder.rglob("*.partial"))


@pytest.mark.e2e  # the whole workflow, every step for real
def test_other_settings_in_the_same_folder_are_refused(small_run):
    config, _ = small_run
    with pytest.raises(InputError, match=r"other settings \(epochs, train_pairs\)"):
        quickstart(QuickstartConfig(**{**config.__dict__, "epochs": 5, "train_pairs": 300}))
    # workers and device do not change the results: they may differ between runs
    assert QuickstartConfig(**{**config.__dict__, "workers": 1}).folder == config.folder


def test_a_folder_with_other_files_or_a_file_is_refused(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "mine.jpg").write_bytes(b"precious")
    with pytest.raises(InputError, match="not empty and holds no quickstart"):
        quickstart(QuickstartConfig(folder=tmp_path / "photos", **SMALL))
    assert [p.name for p in (tmp_path / "photos").iterdir()] == ["mine.jpg"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        quickstart(QuickstartConfig(folder=tmp_path / "file", **SMALL))


def test_a_half_written_data_folder_is_written_again(tmp_path):
    out = tmp_path / "train"
    (tmp_path / "train.partial").mkdir()
    (tmp_path / "train.partial" / "stale.png").write_bytes(b"half")

    def write(folder: Path) -> None:
        folder.mkdir()
        (folder / "fresh.txt").write_text("done")

    _write_once(out, write)
    assert sorted(p.name for p in out.iterdir()) == ["fresh.txt"]
    assert not (tmp_path / "train.partial").exists()
    _write_once(out, lambda folder: pytest.fail("a complete folder is never rewritten"))


@pytest.mark.e2e  # the whole workflow, every step for real
def test_overview_links_every_report_and_nothing_remote(small_run):
    config, result = small_run
    overview = Path(result.overview)
    links = re.findall(r'href="([^"]+)"', overview.read_text())
    assert sorted(links) == ["audit.html", "search.html", "zeroshot.html"]
    for page in (overview.parent).glob("*.html"):
        text = page.read_text()
        assert not re.search(r'(src|href)="(https?:)?//', text), page
        assert "url(" not in text


@pytest.mark.e2e
def test_cli_prints_each_step_and_the_overview(small_run):
    config, _ = small_run
    options = [part for key, value in SMALL.items()  # the same run, so every step is reused
               for part in (f"--{key.replace('_', '-')}", str(value))]  # fmt: skip
    table = CliRunner().invoke(cli.app, ["quickstart", str(config.folder), *options])
    assert table.exit_code == 0, table.stderr
    assert "index.html" in table.stdout and "train (reused)" in table.stdout
    last = table.stdout.strip().splitlines()[-1]
    assert last == f"Search it in your browser: clipkit serve --index {config.folder}/index"
    assert table.stderr.count("✓") == len(STEPS)
    as_json = CliRunner().invoke(
        cli.app, ["quickstart", str(config.folder), *options, "--format", "json"]
    )
    steps = json.loads(as_json.stdout)["steps"]
    assert [step["name"] for step in steps] == STEPS
    refused = CliRunner().invoke(cli.app, ["quickstart", str(config.folder), "--epochs", "9"])
    assert refused.exit_code == 1 and "Error:" in refused.stderr and "Hint:" in refused.stderr


def test_stopped_training_exits_130_and_says_how_to_go_on(tmp_path, monkeypatch):
    from clipkit.quickstart import run as quickstart_module

    stopped = SimpleNamespace(interrupted=True, best_checkpoint=None)
    monkeypatch.setattr(quickstart_module, "train", lambda config, progress=None: stopped)
    folder = tmp_path / "qs"
    options = ["--train-pairs", "20", "--val-pairs", "20", "--per-class", "1", "--workers", "0"]
    result = CliRunner().invoke(cli.app, ["quickstart", str(folder), *options])
    assert result.exit_code == 130  # as for Ctrl-C, so scripts can tell it from a failure
    assert "Error: Training stopped early" in result.stderr
    assert f"clipkit quickstart {folder}` again" in " ".join(result.stderr.split())


def _same_steps() -> str:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    return (
        readme.split("### The same steps, one command each")[1]
        .split("```bash\n")[1]
        .split("```")[0]
    )


@pytest.mark.slow  # 12 epochs and seven processes: about two minutes here
def test_readme_steps_run_verbatim_in_bash_with_the_venv_on_path(small_run, tmp_path):
    """#25 item 4: the block, byte for byte, run by bash beside a copy of a quickstart folder,
    with the environment's ``clipkit`` first on PATH as ``source .venv/bin/activate`` puts it
    (the console script, not the test's interpreter)."""
    config, _ = small_run
    shutil.copytree(config.folder, tmp_path / "clipkit-quickstart")
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "clipkit").is_file(), "clipkit's console script is not beside python"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", "-e", "-c", _same_steps()], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for page in ("my-search", "my-zeroshot", "my-audit"):
        assert (tmp_path / "clipkit-quickstart" / "reports" / f"{page}.html").is_file()


@pytest.mark.e2e  # every README step as printed, training included
@pytest.mark.parametrize(
    "epochs",
    [pytest.param(("--epochs", "1"), id="one-epoch")],  # the last --epochs wins
)
def test_readme_steps_run_one_command_each_as_printed(small_run, tmp_path, monkeypatch, epochs):
    """#25 item 4: the README's "same steps, one command each" run as printed on a quickstart
    folder, training included (it used to stop at once: the quickstart had made `run`), and
    the quickstart's own run resumes from inside its folder (`data/train` there is the
    `clipkit-quickstart/data/train` it was trained on)."""
    config, _ = small_run
    lines = _same_steps().replace("\\\n", " ").splitlines()
    assert lines[0] == "cd clipkit-quickstart"
    copy = tmp_path / "clipkit-quickstart"
    shutil.copytree(config.folder, copy)
    recorded = json.loads((copy / "run" / "config.json").read_text())
    monkeypatch.chdir(copy)
    for line in lines[1:]:
        extra = epochs if line.startswith("clipkit train") else ()
        done = CliRunner().invoke(cli.app, [*shlex.split(line)[1:], *extra])
        assert done.exit_code == 0, (line, done.stderr)
    for page in ("my-search", "my-zeroshot", "my-audit"):
        assert (copy / "reports" / f"{page}.html").is_file()
    assert (copy / "my-run" / "last.safetensors").is_file()
    again = [
        "train", "data/train", "-o", "run", "-m", recorded["model"], "--val", "data/val",
        "--eval-classes", "data/classes", "--epochs", str(recorded["epochs"]),
        "--batch-size", str(recorded["batch_size"]), "--workers", "0", "--resume",
    ]  # fmt: skip
    monkeypatch.chdir(config.folder)  # the folder the quickstart trained in (a finished run)
    resumed = CliRunner().invoke(cli.app, again)
    assert "differ" not in resumed.output, resumed.output
    assert resumed.exit_code == 0 and "already finished" in " ".join(resumed.output.split())


# --- the reports in a real browser ------------------------------------------------------------


def _expected_cards(folder: Path, k: int) -> dict[str, int]:
    """Cards each report should show, counted from the tables the quickstart wrote."""
    with (folder / "reports" / "zeroshot.csv").open() as handle:
        predictions = list(csv.DictReader(handle))
    per_label = Counter(row["label"] for row in predictions)
    confusions = Counter(
        (row["target"], row["label_1"]) for row in predictions if row["target"] != row["label_1"]
    )
    worst = sorted(confusions.values(), reverse=True)[:10]  # the report's 10 worst cells
    with (folder / "reports" / "audit.csv").open() as handle:
        flagged = sum(row["flagged"] == "True" for row in csv.DictReader(handle))
    indexed = len(list((folder / "data" / "val").glob("*.png")))
    return {
        "index.html": len(STEPS),
        "search.html": (len(QUERIES) + 1) * min(k, indexed),
        "zeroshot.html": sum(min(8, n) for n in per_label.values()) + sum(min(8, n) for n in worst),
        "audit.html": min(50, flagged),
    }


@pytest.mark.e2e
def test_reports_render_in_chromium(small_run, browser, tmp_path):
    config, _ = small_run
    folder = Path(config.folder)
    expected = _expected_cards(folder, config.k)
    assert expected["search.html"] == 48 and expected["audit.html"] > 0
    for name, cards in expected.items():
        shown = render(browser, folder / "reports" / name, tmp_path / f"{name}.png")
        assert shown.errors == [] and shown.remote == [], name
        assert shown.broken_images == 0, name
        assert shown.cards == cards, name
        assert not is_blank(shown.screenshot), name


@pytest.mark.e2e
def test_the_browser_check_catches_broken_pages(browser, tmp_path):
    broken = tmp_path / "broken.html"
    broken.write_text(
        '<!doctype html><div class="card">x</div><img src="missing.png">'
        '<img src="https://example.invalid/x.png">'
        '<script>console.error("boom"); notDefined();</script>'
    )
    shown = render(browser, broken, tmp_path / "broken.png")
    assert shown.cards == 1
    assert any("boom" in e for e in shown.errors)
    assert any("notDefined" in e for e in shown.errors)
    assert any("missing.png" in e for e in shown.errors)
    assert shown.remote == ["https://example.invalid/x.png"]
    assert shown.broken_images == 2
    blank = tmp_path / "blank.html"
    blank.write_text("<!doctype html><body style='background:#fff'></body>")
    assert is_blank(render(browser, blank, tmp_path / "blank.png").screenshot)


@pytest.mark.slow
def test_default_quickstart_beats_chance_everywhere(tmp_path):
    """The README's promise, at the default size (a few minutes on two cores)."""
    result = quickstart(QuickstartConfig(folder=tmp_path / "qs", workers=min(os.cpu_count(), 2)))
    for step in result.steps:
        if step.score is not None:
            assert step.score > step.chance, step.summary
