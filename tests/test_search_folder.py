"""``clipkit search "…" --in DIR``: a folder embedded and indexed in the user's cache on first
use, and brought up to date (new, edited, deleted images) before each later search, reading no
image when nothing changed."""

from __future__ import annotations

import os

import pytest
from PIL import Image
from typer.testing import CliRunner

from clipkit import cli
from clipkit.search import SearchConfig, search
from clipkit.search.folder import folder_cache
from tests.helpers import TINY

# Each test's ONNX cache holds clipkit-tiny's export, as after a first `clipkit index`: the
# refresh would otherwise export it again in every test (20 s each).
pytestmark = pytest.mark.usefixtures("cached_tiny_export")

runner = CliRunner()
COLOURS = {
    "red.png": (220, 30, 30),
    "green.png": (30, 200, 40),
    "blue.png": (20, 40, 230),
    "yellow.png": (240, 230, 20),
}


def _paint(path, colour, size=48):
    """A picture whose content is its colour, with a stripe so that no two colours blur alike."""
    image = Image.new("RGB", (size, size), colour)
    for x in range(size):
        image.putpixel((x, size // 2), (colour[2], colour[0], colour[1]))
    image.save(path)


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    (folder / "album").mkdir(parents=True)
    for name, colour in COLOURS.items():
        _paint(folder / name, colour)
    _paint(folder / "album" / "purple.png", (150, 20, 160))
    (folder / "notes.txt").write_text("not an image: ignored by --in")
    return folder


def _query_by(image_path, folder, k=10):
    config = SearchConfig(images=(image_path,), folder=folder, model=TINY, k=k, runtime="torch")
    return search(config)


def _paths(result):
    return [os.path.realpath(hit.path) for hit in result.results[0].hits]


@pytest.fixture
def embed_calls(monkeypatch):
    """Counts the runs of the embed service (it still runs)."""
    from clipkit.embed import run as embed_run

    calls = []
    real = embed_run.embed

    def counted(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(embed_run, "embed", counted)
    return calls


def test_the_first_search_embeds_the_folder_and_finds_an_image_by_itself(photos, tmp_path):
    query = tmp_path / "query.png"
    _paint(query, COLOURS["blue.png"])
    result = _query_by(query, photos)
    refresh = result.refresh
    assert refresh is not None and refresh.updated
    assert refresh.embedded == 5 and refresh.pruned == 0 and not refresh.failures
    assert result.kind == "image"
    assert _paths(result)[0] == str((photos / "blue.png").resolve())
    assert len(_paths(result)) == 5  # the .txt note is not an image
    cache_root = os.environ["CLIPKIT_FOLDER_CACHE"]
    assert str(refresh.cache.root).startswith(cache_root)


def test_nothing_changed_means_no_image_read(photos, tmp_path, monkeypatch, embed_calls):
    query = tmp_path / "query.png"
    _paint(query, COLOURS["red.png"])
    first = _query_by(query, photos)
    assert len(embed_calls) == 1

    from clipkit.inputs import files

    reads = []
    real_read = files.read_bytes
    monkeypatch.setattr(
        files, "read_bytes", lambda path, **kw: reads.append(path) or real_read(path, **kw)
    )
    second = _query_by(query, photos)
    assert len(embed_calls) == 1  # not run again
    assert reads == [str(query)]  # the query image, and nothing else
    assert second.refresh is not None and not second.refresh.updated
    assert _paths(second) == _paths(first)


def test_added_edited_and_deleted_images_are_reflected_in_the_next_search(photos, tmp_path):
    query = tmp_path / "query.png"
    _paint(query, (10, 10, 10))  # black: not in the folder yet
    _query_by(query, photos)

    _paint(photos / "album" / "black.png", (10, 10, 10))  # added
    added = _query_by(query, photos)
    assert added.refresh.embedded == 1 and added.refresh.pruned == 0
    assert _paths(added)[0] == str((photos / "album" / "black.png").resolve())

    _paint(photos / "green.png", (250, 140, 0))  # edited: green becomes orange
    orange = tmp_path / "orange.png"
    _paint(orange, (250, 140, 0))
    edited = _query_by(orange, photos)
    assert edited.refresh.embedded == 1 and edited.refresh.pruned == 1
    assert _paths(edited)[0] == str((photos / "green.png").resolve())
    assert len(_paths(edited)) == 6  # the old green row is gone

    (photos / "red.png").unlink()  # deleted
    deleted = _query_by(query, photos)
    assert deleted.refresh.embedded == 0 and deleted.refresh.pruned == 1
    assert str((photos / "red.png").resolve()) not in _paths(deleted)
    assert len(_paths(deleted)) == 5


def test_an_unreadable_image_is_skipped_once_and_tried_again_when_it_changes(
    photos, tmp_path, embed_calls
):
    broken = photos / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    query = tmp_path / "query.png"
    _paint(query, (1, 2, 3))
    first = _query_by(query, photos)
    assert [uri for uri, _, _ in first.refresh.failures] == ["broken.png"]
    assert first.refresh.embedded == 5

    second = _query_by(query, photos)
    assert len(embed_calls) == 1 and not second.refresh.updated

    _paint(broken, (1, 2, 3))  # mended
    third = _query_by(query, photos)
    assert len(embed_calls) == 2
    assert third.refresh.embedded == 1 and third.refresh.failures == ()
    assert _paths(third)[0] == str(broken.resolve())


def test_the_cache_is_shared_by_every_path_to_the_folder_and_split_by_model(photos, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(photos)
    assert folder_cache(photos, TINY) == folder_cache(link, TINY)
    assert folder_cache(photos, TINY).root != folder_cache(photos, "clipkit-small:random").root
    here = os.getcwd()
    try:
        os.chdir(photos.parent)
        assert folder_cache("photos", TINY) == folder_cache(photos, TINY)
    finally:
        os.chdir(here)


def test_cli_says_what_it_indexed_then_nothing_when_nothing_changed(photos, tmp_path):
    settings = tmp_path / "settings.toml"
    settings.write_text(f'model = "{TINY}"\n')
    env = {"CLIPKIT_CONFIG": str(settings)}
    first = runner.invoke(cli.app, ["search", "a blue square", "--in", str(photos)], env=env)
    assert first.exit_code == 0, first.output
    said = " ".join(first.stderr.split())
    assert f"with model {TINY} (from {settings})" in said
    assert "5 images embedded" in said
    assert "blue.png" in first.stdout

    second = runner.invoke(
        cli.app, ["search", "a blue square", "--in", str(photos), "-f", "json"], env=env
    )
    assert second.exit_code == 0, second.output
    assert "Indexed" not in second.stderr and "images" not in second.stderr.split("hits")[0]
    assert "blue.png" in second.stdout


@pytest.mark.parametrize(
    ("arguments", "code", "message"),
    [
        (["--in", "missing-folder"], 1, "missing-folder does not exist"),
        (["--in", "PHOTOS", "--index", "somewhere"], 2, "exactly one of --in"),
        (["--in", "PHOTOS", "--kind", "text"], 2, "--in searches images only"),
        (["--in", "EMPTY"], 1, "holds nothing to embed"),
        (["--in", "FILE"], 1, "is not a folder"),
    ],
)
def test_bad_folders_are_clear_errors(photos, tmp_path, arguments, code, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    places = {"PHOTOS": str(photos), "EMPTY": str(tmp_path / "empty")}
    places["FILE"] = str(tmp_path / "file.txt")
    arguments = [places.get(a, a) for a in arguments]
    result = runner.invoke(cli.app, ["search", "a dog", *arguments, "-m", TINY])
    assert result.exit_code == code, result.output
    assert message in " ".join(result.stderr.split())
    assert "Traceback" not in result.output


def test_a_second_search_waits_for_the_first_refresh_then_answers_from_the_cache(
    photos, embed_calls
):
    """#37 D10: while one command brings a folder's cache up to date, another on the same
    folder says it waits, waits, then finds the cache fresh and embeds nothing (it exited 1,
    "being written by another clipkit command")."""
    import threading

    from clipkit.infra.locks import writer_lock
    from clipkit.infra.progress import no_progress
    from clipkit.models.specs import as_spec
    from clipkit.search import folder as folder_module

    cache = folder_cache(photos, TINY)
    waiting, second = threading.Event(), {}

    def told(report):
        if "waiting for another clipkit command" in report.note:
            waiting.set()

    def search_too():
        refresh = folder_module.refresh_folder
        second["refresh"] = refresh(photos, TINY, device="cpu", runtime="torch", progress=told)

    with writer_lock(cache.root, "search --in (the first)"):  # the first command, refreshing
        thread = threading.Thread(target=search_too)
        thread.start()
        assert waiting.wait(60), "the second search did not wait"
        items, _ = folder_module._walk(cache)
        folder_module._refresh(cache, as_spec(TINY), items, "cpu", "torch", 0, no_progress)
    thread.join(120)
    assert len(embed_calls) == 1  # the first's
    assert second["refresh"].updated is False  # the second answered from the cache
