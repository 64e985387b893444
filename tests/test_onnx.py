"""ONNX exports: the torch-free encoder gives torch's embeddings (cosine >= 0.99999 per row)
for the built-in models, loads without torch, open_clip or torchvision, and refuses damaged,
truncated, foreign and half-written exports with a clear error; ``clipkit export``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from clipkit import cli
from clipkit.errors import InputError
from clipkit.inputs.synthetic import captioned_shapes
from clipkit.models import load_model
from clipkit.models.exported import IMAGE_FILE, MANIFEST_FILE, TEXT_FILE, cached_export
from clipkit.models.onnx_encoder import load_onnx
from clipkit.models.onnx_export import export_onnx
from tests.helpers import TINY, corpus

runner = CliRunner()
TEXTS = corpus(60, seed=3)


def _images(count: int) -> list[Image.Image]:
    sizes = [(80, 60), (33, 120), (64, 64), (200, 45)]
    return [
        Image.fromarray(
            np.random.default_rng(n).integers(0, 256, (*sizes[n % 4][::-1], 3), dtype=np.uint8)
        )
        for n in range(count)
    ]


@pytest.fixture
def exported(tiny_export):
    """clipkit-tiny, exported once for the test run: (torch encoder, export folder)."""
    return tiny_export


def _agreement(encoder, onnx) -> tuple[float, float]:
    """The lowest per-row cosine between the runtimes, for texts and for images."""
    texts = float((onnx.encode_texts(TEXTS) * encoder.encode_texts(TEXTS).numpy()).sum(1).min())
    images = _images(8)
    ours = np.stack([onnx.prepare_image(image) for image in images])
    theirs = torch.stack([encoder.prepare_image(image) for image in images])
    assert (ours == theirs.numpy()).all()  # the same uint8 pixels from both decode paths
    pixels = float((onnx.encode_images(ours) * encoder.encode_images(theirs).numpy()).sum(1).min())
    return texts, pixels


def test_tiny_s_embeddings_equal_torch_s(exported):
    encoder, folder = exported
    onnx = load_onnx(folder, fingerprint=encoder.fingerprint)
    assert min(_agreement(encoder, onnx)) >= 0.99999
    assert onnx.embed_dim == 128 and onnx.context_length == 32
    assert onnx.logit_scale == pytest.approx(encoder.logit_scale)
    assert onnx.truncated(["a dog", "word " * 40]) == encoder.truncated(["a dog", "word " * 40])
    assert onnx.encode_texts([]).shape == (0, 128)


@pytest.mark.e2e  # a whole export of its own (20-50 s)
def test_small_s_embeddings_equal_torch_s(tmp_path):
    encoder = load_model("clipkit-small:random", device="cpu")
    export_onnx(encoder, tmp_path / "small")
    onnx = load_onnx(tmp_path / "small", fingerprint=encoder.fingerprint)
    assert min(_agreement(encoder, onnx)) >= 0.99999


@pytest.mark.slow
def test_vit_b_32_s_embeddings_equal_torch_s(tmp_path):
    encoder = load_model("ViT-B-32:random", device="cpu")
    export_onnx(encoder, tmp_path / "vit")
    onnx = load_onnx(tmp_path / "vit", fingerprint=encoder.fingerprint)
    assert min(_agreement(encoder, onnx)) >= 0.99999


@pytest.mark.e2e
def test_the_torch_free_encoder_imports_no_torch(exported):
    _, folder = exported
    code = (
        "import sys\nimport numpy as np\nfrom pathlib import Path\nfrom PIL import Image\n"
        "from clipkit.models.onnx_encoder import load_onnx\n"
        f"onnx = load_onnx(Path({str(folder)!r}))\n"
        "onnx.encode_texts(['a dog'])\n"
        "onnx.encode_images(onnx.prepare_image(Image.new('RGB', (90, 70)))[None])\n"
        "print(' '.join(m for m in ('torch', 'open_clip', 'torchvision') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


def _copy(folder: Path, to: Path) -> Path:
    to.mkdir()
    for path in folder.iterdir():
        (to / path.name).write_bytes(path.read_bytes())
        os.utime(to / path.name, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns))
    return to


def test_a_truncated_tower_is_refused(exported, tmp_path):
    _, folder = exported
    copy = _copy(folder, tmp_path / "copy")
    data = (copy / TEXT_FILE).read_bytes()
    (copy / TEXT_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="text.onnx has .* bytes where its export wrote"):
        load_onnx(copy)


def test_a_damaged_tower_of_the_same_size_is_refused(exported, tmp_path):
    _, folder = exported
    copy = _copy(folder, tmp_path / "copy")
    data = bytearray((copy / IMAGE_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / IMAGE_FILE).write_bytes(bytes(data))
    with pytest.raises(InputError, match="not the file its export wrote"):
        load_onnx(copy)


def test_a_copied_export_is_checked_and_accepted(exported, tmp_path):
    encoder, folder = exported
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in folder.iterdir():  # new modification times: every file is hashed
        (copy / path.name).write_bytes(path.read_bytes())
    onnx = load_onnx(copy, fingerprint=encoder.fingerprint)
    assert onnx.encode_texts(["a dog"]).shape == (1, 128)


def test_an_export_of_another_model_is_refused(exported):
    _, folder = exported
    with pytest.raises(InputError, match="not of the model with fingerprint 0123"):
        load_onnx(folder, fingerprint="0123456789abcdef")


def test_a_missing_tokenizer_file_is_refused(exported, tmp_path):
    _, folder = exported
    copy = _copy(folder, tmp_path / "copy")
    (copy / "bpe_simple_vocab_16e6.txt.gz").unlink()
    with pytest.raises(InputError, match="bpe_simple_vocab_16e6.txt.gz is missing"):
        load_onnx(copy)


@pytest.mark.parametrize("content", ["", "{not json", json.dumps({"spec": "x"})])
def test_a_broken_manifest_is_refused(exported, tmp_path, content):
    _, folder = exported
    copy = _copy(folder, tmp_path / "copy")
    (copy / MANIFEST_FILE).write_text(content)
    with pytest.raises(InputError, match="not a readable export manifest"):
        load_onnx(copy)


def test_a_folder_without_an_export_is_refused(tmp_path):
    with pytest.raises(InputError, match="holds no ONNX export"):
        load_onnx(tmp_path)


@pytest.mark.e2e  # a whole export of its own (20 s)
def test_an_interrupted_export_leaves_nothing_to_load(exported, tmp_path, monkeypatch):
    """The export stops after the image tower: the destination never holds half a model, and
    an earlier export there is kept whole."""
    encoder, folder = exported
    target = _copy(folder, tmp_path / "target")
    real_export = torch.onnx.export
    calls = []

    def stop_after_the_image_tower(*args, **kwargs):
        calls.append(args[2])
        if args[2].endswith(TEXT_FILE):
            raise KeyboardInterrupt
        return real_export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", stop_after_the_image_tower)
    with pytest.raises(KeyboardInterrupt):
        export_onnx(encoder, target)
    assert load_onnx(target, fingerprint=encoder.fingerprint).encode_texts(["x"]).shape == (1, 128)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]  # no staging folder left
    with pytest.raises(KeyboardInterrupt):
        export_onnx(encoder, tmp_path / "new")
    assert not (tmp_path / "new").exists()


@pytest.mark.e2e
def test_an_export_killed_mid_way_leaves_nothing_to_load_and_is_swept(exported, tmp_path):
    """kill -9 while the towers are written: no export where a reader looks (so ``auto``
    would run torch), and the next export removes the dead one's staging folder."""
    import signal
    import time

    encoder, _ = exported
    target = tmp_path / "target"
    code = "import sys; from clipkit.cli import main; sys.argv[0] = 'clipkit'; main()"
    process = subprocess.Popen(
        [sys.executable, "-c", code, "export", "-m", TINY, "-o", str(target)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    staging: list[Path] = []
    while time.monotonic() < deadline and process.poll() is None:
        staging = [p for p in tmp_path.glob(".target.export-*") if any(p.iterdir())]
        if staging:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert staging, "the export finished before it could be killed"
    assert not target.exists()
    with pytest.raises(InputError, match="holds no ONNX export"):
        load_onnx(target)
    alive = tmp_path / f".target.export-{os.getpid()}-live"  # a running export's: kept
    alive.mkdir()
    export_onnx(encoder, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == [alive.name, "target"]


def test_export_refuses_a_folder_that_is_not_an_export(exported, tmp_path):
    encoder, _ = exported
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="is not an ONNX export"):
        export_onnx(encoder, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_a_model_whose_tokenizer_needs_torch_is_refused(exported, tmp_path, monkeypatch):
    encoder, _ = exported
    monkeypatch.setattr(type(encoder), "torch_free_tokenizer", lambda self: None)
    with pytest.raises(InputError, match="cannot run without torch"):
        export_onnx(encoder, tmp_path / "out")


def test_an_unusable_cache_folder_is_a_clear_error(exported, tmp_path, monkeypatch):
    """A cache path through a file, and a cache folder that refuses writes (a permission
    error, as for a read-only folder when not running as root)."""
    encoder, _ = exported
    (tmp_path / "a_file").write_text("")
    with pytest.raises(InputError, match="a_file is a file, not a folder"):
        export_onnx(encoder, tmp_path / "a_file" / "x")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path))

    monkeypatch.setattr("tempfile.mkdtemp", refuse)
    with pytest.raises(InputError, match="Cannot write the export .*Permission denied"):
        export_onnx(encoder, tmp_path / "ro")


@pytest.mark.e2e  # a whole export of its own (20 s)
def test_the_export_command_fills_the_cache_by_fingerprint(tmp_path, monkeypatch, exported):
    encoder, _ = exported
    monkeypatch.setenv("CLIPKIT_ONNX_CACHE", str(tmp_path / "cache"))
    result = runner.invoke(cli.app, ["export", "-m", TINY])
    assert result.exit_code == 0, result.output
    folder = cached_export(encoder.fingerprint)
    assert folder == tmp_path / "cache" / encoder.fingerprint
    assert f"Exported {TINY} (fingerprint {encoder.fingerprint}" in result.stderr
    assert result.stdout == ""  # not the optimizer's "failed in shape inference" prints
    assert load_onnx(folder, fingerprint=encoder.fingerprint).embed_dim == 128


@pytest.mark.e2e  # a whole export of its own (20-50 s)
def test_int8_is_refused_where_it_changes_the_answers(exported, tmp_path):
    """A random model's embeddings are near-random: int8 reorders its top-10s."""
    encoder, _ = exported
    with pytest.raises(InputError, match="int8 changes this model's answers too much") as caught:
        export_onnx(encoder, tmp_path / "int8", "int8", captioned_shapes(256))
    assert "top-10 images overlap fp32's by 0." in caught.value.message
    assert caught.value.hint == "Export it in fp32 (the default)."
    assert list(tmp_path.iterdir()) == []  # nothing published, no staging left


@pytest.mark.e2e  # a whole export of its own (20-50 s)
def test_int8_where_it_agrees_replaces_the_towers_and_records_the_figures(
    finished_run, tmp_path, monkeypatch
):
    """No model this machine can make meets the bar (the trained clipkit-tiny reaches a top-10
    overlap of 0.96: its probe has many near-identical shapes, whose order int8 shuffles), so
    the bar is lowered here to see what an offered int8 export is."""
    from clipkit.models import onnx_int8

    # With torch 2.14 the trained clipkit-tiny's int8 export overlaps fp32's top 10 by 0.92 and
    # moves recall@10 by 0.07; the path under test is what follows an export that passes.
    monkeypatch.setattr(onnx_int8, "MIN_OVERLAP", 0.85)
    monkeypatch.setattr(onnx_int8, "MAX_RECALL_GAP", 0.1)
    config, _ = finished_run
    encoder = load_model(config.out, device="cpu")
    fp32 = export_onnx(encoder, tmp_path / "fp32")
    int8 = export_onnx(encoder, tmp_path / "int8", "int8", captioned_shapes(256))
    agreement = int8.agreement
    assert int8.precision == "int8" and agreement is not None
    assert agreement["top10_overlap"] >= 0.85 and agreement["min_cosine_texts"] > 0.99
    assert sorted(int8.files) == sorted(fp32.files)  # the same names, int8 content
    assert sum(r["bytes"] for r in int8.files.values()) < 0.6 * sum(
        r["bytes"] for r in fp32.files.values()
    )
    onnx = load_onnx(tmp_path / "int8", fingerprint=encoder.fingerprint)
    cosines = (onnx.encode_texts(TEXTS) * encoder.encode_texts(TEXTS).numpy()).sum(1)
    assert cosines.min() > 0.99  # close to torch's, not equal


def test_an_unknown_precision_or_a_missing_probe_is_a_usage_error(exported, tmp_path):
    encoder, _ = exported
    with pytest.raises(InputError, match="Unknown ONNX precision 'fp16'"):
        export_onnx(encoder, tmp_path / "x", "fp16")
    with pytest.raises(InputError, match="needs a probe of image-caption pairs"):
        export_onnx(encoder, tmp_path / "x", "int8")
    images, captions = captioned_shapes(5)
    with pytest.raises(InputError, match="needs more than 10 image-caption pairs"):
        export_onnx(encoder, tmp_path / "x", "int8", (images, captions))
    assert list(tmp_path.iterdir()) == []
