"""``clipkit audit``: planted swaps are flagged and suggest each other's captions, calibration on
a controlled score distribution gives the requested rate, ranks equal a brute-force count, the
duplicates and long captions are reported, bad images are skipped and listed, HTML is escaped,
and ``--fail-on-flags`` sets the exit code."""

from __future__ import annotations

import json
import math
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

from clipkit import cli, store
from clipkit.audit import AuditConfig, audit
from clipkit.errors import InputError
from clipkit.score.metrics import auroc
from tests.helpers import TINY

runner = CliRunner()


def _write_pairs(
    folder: Path, encoder, images: torch.Tensor, captions: torch.Tensor, texts: list[str]
) -> None:
    """An embeddings folder of image rows ``i.png`` and text rows for their ``i.txt`` sidecars."""
    size = images.shape[0]
    stamp = store.ModelStamp(TINY, encoder.fingerprint, encoder.embed_dim)
    rows = {
        "id": [f"img{i}" for i in range(size)] + [f"txt{i}" for i in range(size)],
        "uri": [f"/data/{i:04d}.png" for i in range(size)]
        + [f"/data/{i:04d}.txt" for i in range(size)],
        "kind": ["image"] * size + ["text"] * size,
        "text": [None] * size + list(texts),
    }
    folder.mkdir(parents=True)
    store.write_shard(
        store.shard_path(folder, 0), rows, torch.cat([images, captions]).numpy(), stamp
    )


def _synthetic(size: int, dim: int, noise: float, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    images = F.normalize(torch.randn(size, dim, generator=generator), dim=-1)
    # noise is the norm of the perturbation: caption cosine ≈ 1 / sqrt(1 + noise²)
    perturbation = noise / dim**0.5 * torch.randn(size, dim, generator=generator)
    captions = F.normalize(images + perturbation, dim=-1)
    return images, captions


def test_planted_swaps_are_flagged_and_suggest_each_others_captions(tmp_path, tiny_encoder):
    dim = tiny_encoder.embed_dim
    images, captions = _synthetic(200, dim, noise=0.6)
    texts = [f"caption {i}" for i in range(200)]
    swaps = [(0, 1), (10, 11), (50, 51), (120, 121)]
    for a, b in swaps:
        captions[[a, b]] = captions[[b, a]]
        texts[a], texts[b] = texts[b], texts[a]
    _write_pairs(tmp_path / "emb", tiny_encoder, images, captions, texts)
    result = audit(AuditConfig(data=tmp_path / "emb", device="cpu", fpr=0.01))
    assert result.input_kind == "embeddings" and len(result.pairs) == 200
    for a, b in swaps:
        for mine, other in ((a, b), (b, a)):
            pair = result.pairs[mine]
            assert pair.flagged and pair.caption == f"caption {other}"
            assert pair.suggested_caption == f"caption {mine}"  # its own, found at the partner
            assert pair.suggested_image == f"/data/{other:04d}.png"
    planted = {i for pair in swaps for i in pair}
    worst = [result.pairs.index(p) for p in result.flagged[: len(planted)]]
    assert set(worst) == planted  # the planted pairs are the worst eight
    clean_flagged = sum(p.flagged for i, p in enumerate(result.pairs) if i not in planted)
    assert clean_flagged <= 4  # 1 % of unrelated pairs pass; clean pairs sit far above them


def test_calibration_gives_the_requested_rate_on_fresh_shuffles(tmp_path, tiny_encoder):
    """The threshold is set on one set of shuffles; fresh shuffles pass at about --fpr."""
    dim, size, fpr = tiny_encoder.embed_dim, 1500, 0.05
    images, captions = _synthetic(size, dim, noise=1.5, seed=1)
    _write_pairs(tmp_path / "emb", tiny_encoder, images, captions, [f"c{i}" for i in range(size)])
    result = audit(AuditConfig(data=tmp_path / "emb", fpr=fpr, device="cpu", seed=3))
    calibration = result.calibration
    assert calibration.statistic == "mismatch" and calibration.null_pass_rate <= fpr
    # Independent definition: CSLS deficit with 10-neighbourhoods from the full matrix.
    full = images @ captions.T
    r_image, r_caption = full.topk(10, dim=1).values.mean(1), full.topk(10, dim=0).values.mean(0)
    generator = torch.Generator().manual_seed(12345)
    passed = total = 0
    for _ in range(20):
        shuffled = torch.randperm(size, generator=generator)
        keep = shuffled != torch.arange(size)
        i, j = torch.arange(size)[keep], shuffled[keep]
        mismatch = r_image[i] + r_caption[j] - 2 * full[i, j]
        passed += int((mismatch < calibration.threshold).sum())
        total += int(keep.sum())
    assert abs(passed / total - fpr) < 0.01  # 30,000 draws: the binomial sd is 0.0013
    mine = torch.tensor([p.mismatch for p in result.pairs])
    torch.testing.assert_close(mine, r_image + r_caption - 2 * full.diagonal(), atol=1e-5, rtol=0)


def test_ranks_margins_and_cosines_equal_brute_force(tmp_path, tiny_encoder):
    images, captions = _synthetic(60, tiny_encoder.embed_dim, noise=1.0, seed=2)
    _write_pairs(tmp_path / "emb", tiny_encoder, images, captions, [f"c{i}" for i in range(60)])
    result = audit(AuditConfig(data=tmp_path / "emb", device="cpu"))
    full = images @ captions.T
    for i, pair in enumerate(result.pairs):
        others = torch.cat([full[i, :i], full[i, i + 1 :]])
        column = torch.cat([full[:i, i], full[i + 1 :, i]])
        assert pair.caption_rank == int((others > full[i, i] + 1e-5).sum())
        assert pair.image_rank == int((column > full[i, i] + 1e-5).sum())
        assert pair.cosine == pytest.approx(float(full[i, i]), abs=1e-5)
        assert pair.margin == pytest.approx(float(full[i, i] - others.max()), abs=1e-5)


def test_retrieval_recall_follows_its_definition(tmp_path, tiny_encoder):
    """R@k: the share of images whose own caption is among their k best captions (and the
    reverse), from the full similarity matrix, as CLIP_benchmark computes it."""
    images, captions = _synthetic(80, tiny_encoder.embed_dim, noise=5.0, seed=4)
    _write_pairs(tmp_path / "emb", tiny_encoder, images, captions, [f"c{i}" for i in range(80)])
    result = audit(AuditConfig(data=tmp_path / "emb", device="cpu"))
    full = images @ captions.T
    truth = torch.arange(80)
    image_to_text = full.argsort(dim=1, descending=True)  # captions, best first, per image
    text_to_image = full.argsort(dim=0, descending=True).T  # images, best first, per caption
    figures = result.summary()
    for k in (1, 5, 10):
        expected = (image_to_text[:, :k] == truth[:, None]).any(1).float().mean().item()
        assert figures[f"image_to_text_r{k}"] == pytest.approx(expected)
        expected = (text_to_image[:, :k] == truth[:, None]).any(1).float().mean().item()
        assert figures[f"text_to_image_r{k}"] == pytest.approx(expected)
    position = (image_to_text == truth[:, None]).float().argmax(1) + 1.0
    assert figures["image_to_text_mean_rank"] == pytest.approx(position.mean().item())
    assert 0.2 < figures["image_to_text_r1"] < 0.9  # a case where the ranks matter
    shown = runner.invoke(cli.app, ["audit", str(tmp_path / "emb"), "--device", "cpu"])
    line = f"image→text R@1 {figures['image_to_text_r1']:.1%}"
    assert shown.exit_code == 0 and line in " ".join(shown.stderr.split())


def test_raw_cosine_threshold_flags_below_it(tmp_path, tiny_encoder):
    images, captions = _synthetic(40, tiny_encoder.embed_dim, noise=1.0, seed=4)
    _write_pairs(tmp_path / "emb", tiny_encoder, images, captions, [f"c{i}" for i in range(40)])
    result = audit(AuditConfig(data=tmp_path / "emb", threshold=0.6, device="cpu"))
    assert result.calibration.statistic == "cosine" and result.calibration.fpr is None
    assert [p.flagged for p in result.pairs] == [p.cosine < 0.6 for p in result.pairs]
    assert [p.cosine for p in result.flagged] == sorted(p.cosine for p in result.flagged)


def test_duplicates_are_reported_not_flagged_as_errors(tmp_path, tiny_encoder):
    images, captions = _synthetic(30, tiny_encoder.embed_dim, noise=0.3, seed=5)
    texts = [f"c{i}" for i in range(30)]
    texts[7] = texts[6]  # one caption on two different images
    _write_pairs(tmp_path / "emb", tiny_encoder, images, captions, texts)
    result = audit(AuditConfig(data=tmp_path / "emb", device="cpu"))
    assert result.duplicate_captions == (("c6", ("/data/0006.png", "/data/0007.png")),)
    assert result.pairs[6].suggested_caption != "c6"  # never suggests the identical caption


# --- real images through the trained tiny model ----------------------------------------------


@pytest.fixture(scope="module")
def swapped_shapes(shapes, tmp_path_factory):
    """A copy of the training shapes with 6 pairs of captions swapped (different colours)."""
    folder = tmp_path_factory.mktemp("swapped") / "data"
    shutil.copytree(shapes / "data", folder)
    files = sorted(folder.glob("*.txt"))
    rng, swapped = random.Random(0), []
    candidates = rng.sample(files, 40)
    while len(swapped) < 12:
        a, b = candidates.pop(), candidates.pop()
        if a.read_text().split()[2] != b.read_text().split()[2]:  # colour differs
            ta, tb = a.read_text(), b.read_text()
            a.write_text(tb)
            b.write_text(ta)
            swapped += [a.with_suffix(".png").name, b.with_suffix(".png").name]
    return folder, set(swapped)


def test_trained_model_ranks_planted_swaps_high(swapped_shapes, finished_run):
    folder, swapped = swapped_shapes
    model = str(Path(finished_run[1].run_dir) / "best.safetensors")
    result = audit(AuditConfig(data=folder, model=model, workers=0, device="cpu", fpr=0.01))
    assert result.input_kind == "pairs" and len(result.pairs) == 200
    bad = [p.mismatch for p in result.pairs if Path(p.image).name in swapped]
    good = [p.mismatch for p in result.pairs if Path(p.image).name not in swapped]
    is_bad = [Path(p.image).name in swapped for p in result.pairs]
    scores = [-p.cosine for p in result.pairs]
    cosine = auroc(
        [s for s, b in zip(scores, is_bad, strict=True) if b],
        [s for s, b in zip(scores, is_bad, strict=True) if not b],
    )
    assert auroc(bad, good) >= 0.9 and auroc(bad, good) >= cosine - 0.01
    assert all(p.flagged for p in result.pairs if Path(p.image).name in swapped)


def test_a_siglip_model_gives_each_pair_its_match_probability(
    swapped_shapes, finished_run, tmp_path
):
    """σ(t·cos + b) with the checkpoint's own t and b, in the result, the summary and the
    flagged table; a softmax model's pairs have none."""
    from safetensors.torch import load_file

    from clipkit.models import load_model
    from clipkit.models.checkpoints import write_checkpoint

    folder, _ = swapped_shapes
    trained = str(Path(finished_run[1].run_dir) / "best.safetensors")
    encoder = load_model(trained, device="cpu")
    encoder.add_logit_bias(-3.5)
    siglip = write_checkpoint(
        tmp_path / "siglip.safetensors", encoder.model.state_dict(), encoder.checkpoint_meta()
    )
    weights = load_file(siglip)
    t, b = math.exp(float(weights["logit_scale"])), float(weights["logit_bias"])
    result = audit(AuditConfig(data=folder, model=str(siglip), workers=0, device="cpu"))
    assert result.logit_bias == pytest.approx(-3.5)
    for pair in result.pairs:
        expected = 1 / (1 + math.exp(-(t * pair.cosine + b)))
        assert pair.match_probability == pytest.approx(expected, abs=1e-5)
    plain = audit(AuditConfig(data=folder, model=trained, workers=0, device="cpu"))
    assert plain.logit_bias is None and all(p.match_probability is None for p in plain.pairs)
    flagged = tmp_path / "flagged.csv"
    shown = CliRunner().invoke(
        cli.app,
        ["audit", str(folder), "-m", str(siglip), "--workers", "0", "--device", "cpu",
         "--write-flagged", str(flagged)],
    )  # fmt: skip
    assert shown.exit_code == 0, shown.output
    assert "Match probability σ(t·cos + b), the SigLIP model's own" in shown.stderr
    header = flagged.read_text().splitlines()[0].split(",")
    assert header[-1] == "match_probability"


def test_bad_images_are_skipped_and_listed(tmp_path):
    for i, colour in enumerate([(255, 0, 0), (0, 0, 255), (0, 255, 0)]):
        Image.new("RGB", (32, 32), colour).save(tmp_path / f"{i}.png")
        (tmp_path / f"{i}.txt").write_text(f"colour {i}")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n nope")
    (tmp_path / "broken.txt").write_text("a broken image")
    (tmp_path / "lonely.png").write_bytes((tmp_path / "0.png").read_bytes())
    result = audit(AuditConfig(data=tmp_path, model=TINY, workers=0, device="cpu"))
    assert len(result.pairs) == 3
    skipped = {Path(uri).name: stage for uri, stage, _ in result.failures}
    assert skipped == {"broken.png": "decode", "lonely.png": "caption"}


def test_long_captions_are_counted_and_chunked(tmp_path, tiny_encoder):
    long_text = " ".join(["a red square on a grey background"] * 40)
    for i in range(3):
        Image.new("RGB", (32, 32), (80 * i, 0, 0)).save(tmp_path / f"{i}.png")
        (tmp_path / f"{i}.txt").write_text(long_text if i == 0 else f"short caption {i}")
    assert tiny_encoder.truncated([long_text]) == [True]
    truncated = audit(AuditConfig(data=tmp_path, model=TINY, workers=0, device="cpu"))
    chunked = audit(
        AuditConfig(data=tmp_path, model=TINY, workers=0, device="cpu", long_captions="chunk")
    )
    assert truncated.long_captions == chunked.long_captions == 1
    assert truncated.pairs[0].truncated and not truncated.pairs[1].truncated
    assert chunked.pairs[0].cosine >= truncated.pairs[0].cosine - 1e-6  # max over windows


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"fpr": 0.0}, "--fpr"),
        ({"fpr": 1.0}, "--fpr"),
        ({"threshold": 1.5}, "cosine"),
        ({"long_captions": "drop"}, "--long-captions"),
    ],
)
def test_bad_options_are_refused(tmp_path, options, message):
    with pytest.raises(InputError, match=message):
        audit(AuditConfig(data=tmp_path, model=TINY, **options))


def test_fewer_than_two_pairs_is_an_error(tmp_path):
    Image.new("RGB", (32, 32)).save(tmp_path / "0.png")
    (tmp_path / "0.txt").write_text("alone")
    with pytest.raises(InputError, match="needs 2"):
        audit(AuditConfig(data=tmp_path, model=TINY, workers=0, device="cpu"))


@pytest.mark.parametrize("layout", ["folder", "tar"])
def test_auditing_the_embeddings_equals_auditing_the_source(tmp_path, layout):
    """Copies (an image twice under two captions, a caption on two images) have no rows of
    their own in an embeddings folder, only aliases: they used to drop out of the audit."""
    import io
    import tarfile

    from PIL import Image

    from clipkit.embed import EmbedConfig, embed

    files: dict[str, bytes] = {}
    for i in range(6):
        pixels = np.random.default_rng(i).integers(0, 256, (40, 40, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        files[f"{i}.png"], files[f"{i}.txt"] = buffer.getvalue(), f"caption number {i}".encode()
    files["dup.png"], files["dup.txt"] = files["0.png"], b"something else entirely"
    files["x.png"], files["x.txt"] = files["1.png"], files["2.txt"]
    source = tmp_path / "pairs"
    source.mkdir()
    if layout == "folder":
        for name, data in files.items():
            (source / name).write_bytes(data)
    else:
        with tarfile.open(source / "00000.tar", "w") as archive:
            for name, data in sorted(files.items()):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    embed(
        EmbedConfig(
            sources=(str(source),), out_dir=tmp_path / "emb", model=TINY, device="cpu", workers=0
        )
    )
    direct = audit(AuditConfig(data=source, model=TINY, workers=0, device="cpu"))
    stored = audit(AuditConfig(data=tmp_path / "emb", device="cpu"))
    assert len(stored.pairs) == len(direct.pairs) == 8 and not stored.failures
    by_image = {p.image: p for p in direct.pairs}
    for pair in stored.pairs:
        same = by_image[pair.image]
        assert pair.caption == same.caption
        assert pair.cosine == pytest.approx(same.cosine, abs=1e-5)
        assert (pair.caption_rank, pair.image_rank) == (same.caption_rank, same.image_rank)
    assert stored.duplicate_images == direct.duplicate_images and len(stored.duplicate_images) == 2
    assert stored.duplicate_captions == direct.duplicate_captions


# --- command line and HTML -------------------------------------------------------------------


@pytest.fixture()
def planted_embeddings(tmp_path, tiny_encoder):
    images, captions = _synthetic(50, tiny_encoder.embed_dim, noise=0.5, seed=6)
    texts = [f"caption {i}" for i in range(50)]
    captions[[0, 1]] = captions[[1, 0]]
    texts[0], texts[1] = '<script>alert("x")</script>', "Tom & Jerry <b>"
    _write_pairs(tmp_path / "emb", tiny_encoder, images, captions, texts)
    return tmp_path / "emb"


def test_fail_on_flags_sets_the_exit_code(planted_embeddings, tmp_path, tiny_encoder):
    args = ["audit", str(planted_embeddings), "--device", "cpu"]
    flagged = runner.invoke(cli.app, [*args, "--fail-on-flags"])
    assert flagged.exit_code == 1 and "flagged" in flagged.stderr
    assert runner.invoke(cli.app, args).exit_code == 0  # without the flag, flags are not errors
    images, captions = _synthetic(20, tiny_encoder.embed_dim, noise=0.01, seed=7)
    _write_pairs(tmp_path / "clean", tiny_encoder, images, captions, [f"c{i}" for i in range(20)])
    clean = runner.invoke(
        cli.app,
        [
            "audit",
            str(tmp_path / "clean"),
            "--device",
            "cpu",
            "--threshold",
            "-0.5",
            "--fail-on-flags",
        ],
    )
    assert clean.exit_code == 0, clean.stderr


def test_cli_writes_reports_in_every_format(planted_embeddings, tmp_path):
    """--out picks the report's format by its suffix; --format is what stdout shows."""
    import pyarrow.parquet as pq

    base = ["audit", str(planted_embeddings), "--device", "cpu"]
    for name in ("r.json", "r.csv", "r.parquet", "r.jsonl"):
        result = runner.invoke(cli.app, [*base, "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.stderr
    assert len(pq.read_table(tmp_path / "r.parquet")) == 50
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 50
    whole = json.loads((tmp_path / "r.json").read_text())
    assert whole["summary"]["pairs"] == 50 and len(whole["pairs"]) == 50
    on_stdout = runner.invoke(cli.app, [*base, "--format", "json"])
    assert json.loads(on_stdout.stdout)["summary"]["flagged"] >= 2
    lines = runner.invoke(cli.app, [*base, "--format", "jsonl"]).stdout.splitlines()
    assert len(lines) == 50 and {"cosine", "flagged"} <= set(json.loads(lines[0]))
    csv_rows = runner.invoke(cli.app, [*base, "--format", "csv"]).stdout.splitlines()
    assert len(csv_rows) == 51 and "mismatch" in csv_rows[0]
    assert runner.invoke(cli.app, [*base, "--out", str(tmp_path / "r.xml")]).exit_code == 1


def test_outputs_in_the_way_fail_before_any_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # short relative paths: a long one is wrapped mid-word at 80
    Path("a_file").write_text("mine")
    for option, target in (("--out", "a_file/r.csv"), ("--html", "a_file/r.html")):
        result = runner.invoke(cli.app, ["audit", "no-such-data", option, target])
        message = " ".join(result.stderr.split())
        assert result.exit_code == 1 and "a_file is a file, not a folder" in message
        assert "no-such-data" not in message  # refused before the data was even looked at


def test_html_report_escapes_captions(planted_embeddings, tmp_path):
    from clipkit.report import write_audit_report

    result = audit(AuditConfig(data=planted_embeddings, device="cpu"))
    page_path, png = write_audit_report(result, tmp_path / "audit.html")
    page = page_path.read_text()
    assert "<script>alert" not in page and "Jerry <b>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "Tom &amp; Jerry &lt;b&gt;" in page
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http://" not in page and "https://" not in page


def test_a_long_caption_is_cut_in_the_table_and_kept_whole_in_the_file(tmp_path, tiny_encoder):
    """#24 D12 and D13: a 100 KB caption took 18,799 lines of the terminal table, and an
    escape sequence in a caption reached the terminal raw."""
    import pyarrow.parquet as pq

    images, captions = _synthetic(20, tiny_encoder.embed_dim, noise=0.5, seed=6)
    captions[[0, 1]] = captions[[1, 0]]  # pair 0 and 1 swapped: both flagged
    long = "\x1b[2J" + "a very long caption " * 5_000  # 100,004 characters
    texts = [long, "short"] + [f"caption {i}" for i in range(2, 20)]
    _write_pairs(tmp_path / "emb", tiny_encoder, images, captions, texts)
    out = tmp_path / "audit.parquet"
    result = runner.invoke(
        cli.app, ["audit", str(tmp_path / "emb"), "--device", "cpu", "-o", str(out)]
    )
    assert result.exit_code == 0, result.stderr
    assert "\x1b" not in result.stdout and "\\x1b[2J" in result.stdout
    folded = re.sub(r"[\s│┃]", "", result.stdout)  # the cells are folded over lines
    assert "(99,707morecharacters)" in folded
    assert len(result.stdout.splitlines()) < 100
    stored = pq.read_table(out).to_pylist()
    assert long in {row["caption"] for row in stored}


@pytest.mark.e2e
def test_audit_html_wraps_captions_between_words(tmp_path, tiny_encoder, browser):
    """#25 item 9: the cards broke words mid-word (CSS word-break: break-all)."""
    from clipkit.report.html import write_audit_report
    from tests.browser import split_words

    images, captions = _synthetic(20, tiny_encoder.embed_dim, noise=0.5, seed=6)
    captions[[0, 1]] = captions[[1, 0]]
    words = "a photograph of an extraordinarily beautiful mountain landscape under snow"
    texts = [f"{words} number {i}" for i in range(20)]
    _write_pairs(tmp_path / "emb", tiny_encoder, images, captions, texts)
    result = audit(AuditConfig(data=tmp_path / "emb", device="cpu"))
    assert result.flagged
    page = write_audit_report(result, tmp_path / "audit.html")[0]
    split = set(split_words(browser, page, ".meta"))
    assert not split & set(words.split()), split
