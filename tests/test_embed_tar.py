"""``clipkit embed`` of WebDataset ``.tar`` shards (img2dataset's output, clip-retrieval's
``--input_format webdataset``): every sample's image and caption member is embedded like a
file, its ``.json`` member and each one's partner pass through, a damaged shard in a folder is
listed (and keeps its rows under --prune), and an unchanged shard is not read again."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from clipkit import cli
from clipkit.embed import embed
from clipkit.inputs import pipeline
from clipkit.inputs.decode import content_id
from tests.helpers import embed_args, embed_config, png_bytes, rows, tar_sample, write_tar_shard

runner = CliRunner()


@pytest.fixture()
def shards(tmp_path):
    folder = tmp_path / "shards"
    first = {"000000": tar_sample(0, "a red kite"), "000001": tar_sample(1)}
    write_tar_shard(folder / "00000.tar", first)
    second = {"000002": tar_sample(2, "two dogs"), "000003": {"txt": b"a caption alone"}}
    write_tar_shard(folder / "00001.tar", second)
    (folder / "00001_stats.json").write_text("{}")  # img2dataset's side files are passed over
    return folder


def test_samples_are_embedded_with_their_metadata(shards, tmp_path, tiny_encoder):
    result = embed(embed_config([shards], tmp_path / "out"))
    assert (result.embedded, result.skipped) == (6, 0)  # 3 images, 3 captions
    by_uri = {row["uri"]: row for row in rows(tmp_path / "out").values()}
    image = by_uri[f"{shards / '00000.tar'}#000000.png"]
    assert image["id"] == content_id(png_bytes(0)) and image["kind"] == "image"
    assert image["caption"] == "a red kite"
    assert json.loads(image["json"]) == {"url": "https://example.com/0.png"}
    expected = tiny_encoder.encode_images(
        tiny_encoder.prepare_image(Image.open(io.BytesIO(png_bytes(0))).convert("RGB")).unsqueeze(0)
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

    embed(embed_config([shards / "00000.tar"], tmp_path / "out"))
    found = search(
        SearchConfig(
            texts=("a red kite",), embeddings_dir=tmp_path / "out", kind="text", k=1, device="cpu"
        )
    )
    meta = found.results[0].hits[0].meta
    assert meta["image"].endswith("00000.tar#000000.png") and "example.com/0.png" in meta["json"]


def test_a_damaged_shard_is_listed_and_keeps_its_rows_under_prune(shards, tmp_path):
    embed(embed_config([shards], tmp_path / "out"))
    before = {row["uri"] for row in rows(tmp_path / "out").values()}
    good = (shards / "00001.tar").read_bytes()
    (shards / "00001.tar").write_bytes(b"\x00" * 100 + b"not a tar" * 100)  # a bad copy
    again = embed(embed_config([shards], tmp_path / "out", prune=True))
    assert [(uri, stage) for uri, stage, _ in again.failures] == [
        (str(shards / "00001.tar"), "read")
    ]
    assert again.pruned == 0 and {row["uri"] for row in rows(tmp_path / "out").values()} == before
    (shards / "00001.tar").write_bytes(good)
    assert embed(embed_config([shards], tmp_path / "out", prune=True)).failures == ()


def test_bad_shards_named_as_sources_are_listed_and_the_good_ones_embedded(shards, tmp_path):
    """D11 of issue #37: a tar cut inside its first header, an empty tar or a non-tar among the
    sources stopped embed with nothing written for the good ones."""
    import tarfile

    good = shards / "00000.tar"
    bad = {
        "cut.tar": good.read_bytes()[: tarfile.BLOCKSIZE // 2],  # inside the first header
        "empty.tar": b"",
        "junk.tar": b"junk" * 200,  # not a tar at all
    }
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
    named = [good, *(tmp_path / name for name in bad)]
    result = embed(embed_config(named, tmp_path / "out"))
    assert (result.embedded, result.skipped) == (3, 3)  # the good shard: 2 images, 1 caption
    failed = sorted(uri.rsplit("/", 1)[-1] for uri, _, _ in result.failures)
    assert failed == sorted(bad) and {stage for _, stage, _ in result.failures} == {"read"}
    strict = runner.invoke(cli.app, embed_args(named[1], tmp_path / "strict", "--strict"))
    assert strict.exit_code == 1 and "Error: 1 input" in " ".join(strict.stderr.split())


def test_an_unchanged_shard_is_not_read_again(shards, tmp_path, monkeypatch):
    embed(embed_config([shards], tmp_path / "out"))
    seen: list[str] = []
    original = pipeline.read_bytes
    monkeypatch.setattr(pipeline, "read_bytes", lambda path: seen.append(path) or original(path))
    again = embed(embed_config([shards], tmp_path / "out"))
    assert (again.embedded, again.already_present) == (0, 6)
    assert not [path for path in seen if path.endswith(".png")]  # images vouched for by stat
    os.utime(shards / "00000.tar", ns=(1, 1))  # the shard changed: its members are read again
    seen.clear()
    embed(embed_config([shards], tmp_path / "out"))
    assert sorted(os.path.basename(p) for p in seen if p.endswith(".png")) == [
        "00000.tar#000000.png",
        "00000.tar#000001.png",
    ]


def test_the_model_sees_the_same_pixels_as_from_a_file(shards, tmp_path):
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "0.png").write_bytes(png_bytes(0))
    embed(embed_config([tmp_path / "files"], tmp_path / "a"))
    embed(embed_config([shards / "00000.tar"], tmp_path / "b"))
    assert content_id(png_bytes(0)) in rows(tmp_path / "b")
    # Same pixels, other batch companions: the matmul kernels may sum in another order, so the
    # float32 embeddings agree to rounding (1e-7 here), not bit for bit.
    np.testing.assert_allclose(
        rows(tmp_path / "a")[content_id(png_bytes(0))]["embedding"],
        rows(tmp_path / "b")[content_id(png_bytes(0))]["embedding"],
        rtol=0,
        atol=1e-6,
    )


def _four_samples(folder):
    """A shard of 4 samples (png, json, txt each); returns it and each member's
    (header offset, data offset, size), in order."""
    import tarfile

    shard = folder / "00000.tar"
    write_tar_shard(shard, {f"{n:06d}": tar_sample(n, f"caption {n}") for n in range(4)})
    with tarfile.open(shard) as archive:
        places = [(m.offset, m.offset_data, m.size) for m in archive]
    return shard, places


@pytest.mark.parametrize(
    "cut",
    ["inside the third sample's image", "at a header", "inside a header", "the end marker"],
)
def test_a_truncated_shard_is_listed_and_what_precedes_the_cut_is_embedded(tmp_path, cut):
    """#24 D5: a cut `.tar` was read partly with nothing reported (exit 0, an empty failures
    table), where GNU tar reports an unexpected end of file."""
    from clipkit.inputs.pairs import _shard_pairs

    shard, places = _four_samples(tmp_path / "shards")
    third_png = places[6]  # members: png, json, txt of each sample
    length = {
        "inside the third sample's image": third_png[1] + third_png[2] // 2,
        "at a header": third_png[0],
        "inside a header": third_png[0] + 100,
        "the end marker": places[-1][1] + places[-1][2] + 512 - places[-1][2] % 512,
    }[cut]
    data = shard.read_bytes()
    shard.write_bytes(data[:length])
    result = embed(embed_config([shard.parent], tmp_path / "out"))
    assert [(uri, stage) for uri, stage, _ in result.failures] == [(str(shard), "read")]
    assert "tar shard is truncated" in result.failures[0][2]
    kept = {row["uri"].rsplit("#", 1)[1] for row in rows(tmp_path / "out").values()}
    whole_samples = 4 if cut == "the end marker" else 2
    assert {m for m in kept if m.endswith(".png")} == {f"{n:06d}.png" for n in range(whole_samples)}
    # train (and audit of pairs) read the same listing
    pairs, skipped = _shard_pairs([shard])
    assert len(pairs) == whole_samples and skipped[0][0] == str(shard)
    assert "truncated" in skipped[0][2]


def test_a_damaged_header_and_members_that_are_not_files_are_listed(tmp_path):
    """#24 D5 and D10: a header overwritten mid-shard, and symlink, hard link and device
    members, used to be passed over without a word."""
    import tarfile

    shard, places = _four_samples(tmp_path / "shards")
    data = bytearray(shard.read_bytes())
    data[places[9][0] : places[9][0] + 100] = b"\xff" * 100  # the fourth sample's png header
    shard.write_bytes(bytes(data))
    links = tmp_path / "shards" / "00001.tar"
    with tarfile.open(links, "w") as archive:
        for name, kind in (("s.png", tarfile.SYMTYPE), ("h.png", tarfile.LNKTYPE)):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, "/etc/passwd"
            archive.addfile(info)
        device = tarfile.TarInfo("d.png")
        device.type = tarfile.CHRTYPE
        archive.addfile(device)
    result = embed(embed_config([shard.parent], tmp_path / "out"))
    reasons = {uri: reason for uri, _, reason in result.failures}
    assert (
        reasons[str(shard)]
        == f"tar shard is damaged (an unreadable member header at byte {places[9][0]})"
    )
    assert reasons[f"{links}#s.png"] == "a symbolic link (to /etc/passwd), not a file"
    assert reasons[f"{links}#h.png"] == "a hard link (to /etc/passwd), not a file"
    assert reasons[f"{links}#d.png"] == "a device, FIFO or other special member, not a file"
    assert len(result.failures) == 4
