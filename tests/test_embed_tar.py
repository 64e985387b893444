"""``clipkit embed`` of WebDataset ``.tar`` shards (img2dataset's output, clip-retrieval's
``--input_format webdataset``): every sample's image and caption member is embedded like a
file, its ``.json`` member and each one's partner pass through, a damaged shard in a folder is
listed (and keeps its rows under --prune), and an unchanged shard is not read again."""

from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from clipkit import pipeline
from clipkit.decode import content_id
from clipkit.embed import embed
from clipkit.errors import InputError
from tests.test_embed import config, rows


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _shard(path, samples: dict[str, dict[str, bytes]]) -> None:
    """A WebDataset shard: members ``KEY.EXT`` in key order, as img2dataset writes them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as archive:
        for key, members in samples.items():
            for extension, data in members.items():
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))


def _sample(n: int, caption: str | None = None) -> dict[str, bytes]:
    members = {"png": _png(n), "json": json.dumps({"url": f"https://example.com/{n}.png"}).encode()}
    if caption is not None:
        members["txt"] = caption.encode()
    return members


@pytest.fixture()
def shards(tmp_path):
    folder = tmp_path / "shards"
    _shard(folder / "00000.tar", {"000000": _sample(0, "a red kite"), "000001": _sample(1)})
    _shard(folder / "00001.tar", {"000002": _sample(2, "two dogs"),
                                  "000003": {"txt": b"a caption alone"}})  # fmt: skip
    (folder / "00001_stats.json").write_text("{}")  # img2dataset's side files are passed over
    return folder


def test_samples_are_embedded_with_their_metadata(shards, tmp_path, tiny_encoder):
    result = embed(config([shards], tmp_path / "out"))
    assert (result.embedded, result.skipped) == (6, 0)  # 3 images, 3 captions
    by_uri = {row["uri"]: row for row in rows(tmp_path / "out").values()}
    image = by_uri[f"{shards / '00000.tar'}#000000.png"]
    assert image["id"] == content_id(_png(0)) and image["kind"] == "image"
    assert image["caption"] == "a red kite"
    assert json.loads(image["json"]) == {"url": "https://example.com/0.png"}
    expected = tiny_encoder.encode_images(
        tiny_encoder.prepare_image(Image.open(io.BytesIO(_png(0))).convert("RGB")).unsqueeze(0)
    )
    np.testing.assert_allclose(image["embedding"], expected[0].numpy(), atol=1e-5)
    caption = by_uri[f"{shards / '00001.tar'}#000002.txt"]
    assert (caption["kind"], caption["text"]) == ("text", "two dogs")
    assert caption["image"] == f"{shards / '00001.tar'}#000002.png"
    assert by_uri[f"{shards / '00000.tar'}#000001.png"]["caption"] is None  # no txt member
    alone = by_uri[f"{shards / '00001.tar'}#000003.txt"]
    assert (alone["text"], alone["image"], alone["json"]) == ("a caption alone", None, None)


def test_a_search_hit_shows_the_sample_s_caption_and_url(shards, tmp_path):
    from clipkit.search import SearchConfig, search

    embed(config([shards / "00000.tar"], tmp_path / "out"))
    found = search(SearchConfig(texts=("a red kite",), embeddings_dir=tmp_path / "out",
                                kind="text", k=1, device="cpu"))  # fmt: skip
    meta = found.results[0].hits[0].meta
    assert meta["image"].endswith("00000.tar#000000.png") and "example.com/0.png" in meta["json"]


def test_a_damaged_shard_is_listed_and_keeps_its_rows_under_prune(shards, tmp_path):
    embed(config([shards], tmp_path / "out"))
    before = {row["uri"] for row in rows(tmp_path / "out").values()}
    good = (shards / "00001.tar").read_bytes()
    (shards / "00001.tar").write_bytes(b"\x00" * 100 + b"not a tar" * 100)  # a bad copy
    again = embed(config([shards], tmp_path / "out", prune=True))
    assert [(uri, stage) for uri, stage, _ in again.failures] == [(str(shards / "00001.tar"),
                                                                   "read")]  # fmt: skip
    assert again.pruned == 0 and {row["uri"] for row in rows(tmp_path / "out").values()} == before
    (shards / "00001.tar").write_bytes(good)
    assert embed(config([shards], tmp_path / "out", prune=True)).failures == ()


def test_a_damaged_shard_named_as_the_source_is_an_error(tmp_path):
    (tmp_path / "bad.tar").write_bytes(b"junk" * 200)
    with pytest.raises(InputError, match="bad.tar is not a readable tar shard"):
        embed(config([tmp_path / "bad.tar"], tmp_path / "out"))


def test_an_unchanged_shard_is_not_read_again(shards, tmp_path, monkeypatch):
    embed(config([shards], tmp_path / "out"))
    seen: list[str] = []
    original = pipeline.read_bytes
    monkeypatch.setattr(pipeline, "read_bytes", lambda path: seen.append(path) or original(path))
    again = embed(config([shards], tmp_path / "out"))
    assert (again.embedded, again.already_present) == (0, 6)
    assert not [path for path in seen if path.endswith(".png")]  # images vouched for by stat
    os.utime(shards / "00000.tar", ns=(1, 1))  # the shard changed: its members are read again
    seen.clear()
    embed(config([shards], tmp_path / "out"))
    assert sorted(os.path.basename(p) for p in seen if p.endswith(".png")) == [
        "00000.tar#000000.png", "00000.tar#000001.png"]  # fmt: skip


def test_the_model_sees_the_same_pixels_as_from_a_file(shards, tmp_path):
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "0.png").write_bytes(_png(0))
    embed(config([tmp_path / "files"], tmp_path / "a"))
    embed(config([shards / "00000.tar"], tmp_path / "b"))
    assert content_id(_png(0)) in rows(tmp_path / "b")
    np.testing.assert_allclose(rows(tmp_path / "a")[content_id(_png(0))]["embedding"],
                               rows(tmp_path / "b")[content_id(_png(0))]["embedding"])  # fmt: skip
