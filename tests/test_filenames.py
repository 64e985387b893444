"""File names that are not valid UTF-8: shown and stored with ``\\xNN`` escapes, read back from
the file system, in embed (folders, line files, WebDataset members), search's gallery, audit
and zeroshot. They used to end each of those commands with a UnicodeEncodeError."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from clipkit.audit import AuditConfig, audit
from clipkit.embed import EmbedConfig, embed
from clipkit.inputs.filenames import as_text, os_path
from clipkit.inputs.files import read_bytes
from clipkit.inputs.pairs import read_pairs
from clipkit.report.html import thumbnail_uri
from clipkit.zeroshot import ZeroShotConfig, zeroshot
from tests.helpers import TINY, make_images

CAFE = b"caf\xe9"  # Latin-1 bytes: not UTF-8


def _rename(path, name: bytes):
    """Move ``path`` to a sibling whose name is raw bytes; returns the new name as str."""
    target = os.path.join(os.fsencode(path.parent), name)
    os.rename(os.fsencode(path), target)
    return os.fsdecode(target)


@pytest.fixture()
def bad_name_dir(tmp_path):
    try:
        probe = tmp_path / os.fsdecode(CAFE)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError:
        pytest.skip("this file system refuses file names that are not UTF-8")
    return tmp_path


def test_as_text_escapes_bad_bytes_and_os_path_reverses_it(tmp_path):
    raw = os.fsdecode(b"/data/" + CAFE + b"/\xff.png")
    shown = as_text(raw)
    assert shown == "/data/caf\\xe9/\\xff.png" and shown.encode("utf-8")
    assert os_path(shown) == raw and os.fsencode(os_path(shown)) == b"/data/" + CAFE + b"/\xff.png"
    assert as_text("/data/café.png") == "/data/café.png"  # valid names are left alone
    assert os_path("/data/café.png") == "/data/café.png"
    assert as_text("lone \ud800 surrogate").encode("utf-8")  # not a file-system escape
    literal = tmp_path / "a\\xe9.png"  # a real name holding a backslash: kept as it is
    literal.write_bytes(b"x")
    assert os_path(str(literal)) == str(literal)


def test_embed_search_audit_and_zeroshot_take_names_that_are_not_utf8(bad_name_dir, tmp_path):
    root = bad_name_dir
    images = make_images(root / "imgs", 3)
    odd_image = _rename(images[0], CAFE + b".jpg")
    note = root / "imgs" / "note.txt"
    note.write_text("a photo of a dog")
    _rename(note, b"note\xff.txt")
    out = root / "emb"
    config = EmbedConfig(
        sources=(str(root / "imgs"),), out_dir=out, model=TINY, device="cpu", workers=0
    )
    first = embed(config)
    assert (first.embedded, first.skipped) == (4, 0)
    uris = sorted(pq.read_table(out / "part-00000.parquet").column("uri").to_pylist())
    assert as_text(odd_image) in uris and str(root / "imgs" / "note\\xff.txt") in uris
    again = embed(config)  # the stored uris match the next run's: nothing new, no aliases
    assert (again.embedded, again.already_present, again.aliases) == (0, 4, 0)
    # The stored uri opens the file: search's gallery shows its thumbnail.
    assert read_bytes(as_text(odd_image)) == Path(odd_image).read_bytes()
    assert thumbnail_uri(as_text(odd_image)) is not None

    pairs = root / "pairs"
    pictures = make_images(pairs, 3)
    for n, picture in enumerate(pictures):
        picture.with_suffix(".txt").write_text(f"caption {n}")
    _rename(pictures[1].with_suffix(".txt"), CAFE + b".txt")
    _rename(pictures[1], CAFE + pictures[1].suffix.encode())
    report = audit(AuditConfig(data=pairs, model=TINY, workers=0, device="cpu"))
    assert len(report.pairs) == 3 and not report.failures
    json.dumps(report.as_dict(), ensure_ascii=False).encode("utf-8")  # writable as UTF-8

    classes = root / "classes"
    for label in ("red", "blue"):
        make_images(classes / label, 2)
    _rename(classes / "blue" / "img0000.jpg", b"\xff.jpg")
    result = zeroshot(
        ZeroShotConfig(images=classes, class_tree=True, model=TINY, workers=0, device="cpu")
    )
    assert len(result.predictions) == 4 and not result.failures
    assert str(classes / "blue" / "\\xff.jpg") in {p.uri for p in result.predictions}
    json.dumps(result.as_dict(), ensure_ascii=False).encode("utf-8")


def test_webdataset_members_with_bad_names_are_read(bad_name_dir):
    shard = bad_name_dir / "pairs.tar"
    (image,) = make_images(bad_name_dir / "src", 1)
    with tarfile.open(shard, "w") as tar:
        for name, data in ((CAFE + b".jpg", image.read_bytes()), (CAFE + b".txt", b"a caption")):
            info = tarfile.TarInfo(os.fsdecode(name))
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    found = read_pairs(shard)
    assert [pair.captions for pair in found.pairs] == [("a caption",)] and not found.skipped
    uri = found.pairs[0].image
    assert uri.encode("utf-8") and uri.endswith("#caf\\xe9.jpg")
    assert read_bytes(uri) == image.read_bytes()


def test_text_typed_in_a_terminal_that_is_not_utf8_reaches_every_output(tmp_path):
    # A Latin-1 terminal sends "é" as the byte 0xE9; Python hands it over as "\udce9", which
    # the HTML gallery used to refuse with "surrogates not allowed" (an "Unexpected" error).
    from typer.testing import CliRunner

    from clipkit import cli
    from clipkit.cli.options import typed_text
    from clipkit.index import IndexConfig, build_index

    assert typed_text("caf\udce9 dog") == "caf\ufffd dog"
    assert typed_text("caf\ud800") == "caf\ufffd\ufffd\ufffd"  # not an escaped byte
    assert typed_text("café 猫") == "café 猫" and typed_text(None) is None
    runner = CliRunner()
    make_images(tmp_path / "imgs", 3)
    (tmp_path / "imgs" / "dog.txt").write_text("a photo of a dog")
    embed(
        EmbedConfig(
            sources=(str(tmp_path / "imgs"),),
            out_dir=tmp_path / "emb",
            model=TINY,
            device="cpu",
            workers=0,
        )
    )
    build_index(IndexConfig(emb_dir=tmp_path / "emb", out_dir=tmp_path / "idx"))
    page = tmp_path / "search.html"
    found = runner.invoke(
        cli.app,
        [
            "search",
            "caf\udce9 dog",
            "--index",
            str(tmp_path / "idx"),
            "-k",
            "2",
            "-f",
            "json",
            "--html",
            str(page),
        ],
    )
    assert found.exit_code == 0, found.output
    assert json.loads(found.stdout)[0]["query"] == "caf\ufffd dog"
    assert "caf\ufffd dog" in page.read_text(encoding="utf-8")

    classes = tmp_path / "classes"
    make_images(classes, 2)
    report = tmp_path / "zeroshot.html"
    labelled = runner.invoke(
        cli.app,
        [
            "zeroshot",
            str(classes),
            "--labels",
            "caf\udce9,dog",
            "-m",
            TINY,
            "--workers",
            "0",
            "--device",
            "cpu",
            "-f",
            "json",
            "--html",
            str(report),
        ],
    )
    assert labelled.exit_code == 0, labelled.output
    assert "caf\ufffd" in json.loads(labelled.stdout)["labels"]
    assert "caf\ufffd" in report.read_text(encoding="utf-8")
