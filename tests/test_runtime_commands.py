"""``--runtime`` on search, zeroshot, audit and embed: the ONNX runtime works from a cached
export without importing torch, open_clip or torchvision (audit scores with torch), with the
same hits, labels, figures and embeddings as torch; ``auto`` picks it only when the cache holds
the model's export, says which ran and why, and ``onnx`` without one is an error."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from clipkit.embed import EmbedConfig, embed
from clipkit.index import IndexConfig, build_index
from tests.helpers import TINY, count_spec_parses, install_export, make_images, rows

HEAVY = ("torch", "open_clip", "torchvision")
# The CLI ends a search with os._exit (no teardown): the probe lists the modules just before.
PROBE = """
import os, sys
from clipkit.cli import main
def listed():
    print("LOADED=" + ",".join(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)
    sys.stderr.flush()
real_exit = os._exit
def listed_exit(code):
    listed()
    real_exit(code)
os._exit = listed_exit
sys.argv = ["clipkit", *sys.argv[1:]]
try:
    main()
except SystemExit as done:
    listed()
    sys.exit(done.code)
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_export):
    """An index of 30 images made with clipkit-tiny, and a cache that holds its export."""
    root = tmp_path_factory.mktemp("runtime")
    make_images(root / "photos", 30)
    (root / "photos" / "notes.txt").write_text("a red circle\n")
    config = EmbedConfig(
        sources=(str(root / "photos"),), out_dir=root / "emb", model=TINY, device="cpu", workers=0
    )
    embed(config)
    build_index(IndexConfig(emb_dir=root / "emb", out_dir=root / "idx", kind="image"))
    cache = root / "cache"
    encoder, exported = tiny_export
    os.environ["CLIPKIT_ONNX_CACHE"], previous = str(cache), os.environ["CLIPKIT_ONNX_CACHE"]
    try:
        install_export(encoder, exported)
    finally:
        os.environ["CLIPKIT_ONNX_CACHE"] = previous
    return root, cache


def _clipkit(project, *args, cache=None, env=None):
    """``clipkit ARGS`` in a fresh interpreter; stderr ends with the heavy modules it loaded."""
    root, default_cache = project
    environment = {**os.environ, "CLIPKIT_ONNX_CACHE": str(cache or default_cache), **(env or {})}
    command = [sys.executable, "-c", PROBE.format(heavy=HEAVY), *args]
    return subprocess.run(command, capture_output=True, text=True, env=environment, cwd=root)


def _search(project, *args, cache=None, env=None):
    root, _ = project
    query = ["search", "a red circle", "--index", str(root / "idx"), "-k", "10", "-f", "json"]
    return _clipkit(project, *query, *args, cache=cache, env=env)


def _said(done) -> str:
    """stderr with its line breaks undone (rich wraps long paths at the pipe's 80 columns)."""
    return " ".join(done.stderr.split())


def _loaded(done) -> str:
    return done.stderr.split("LOADED=")[1].strip()


def _ids(done) -> list[str]:
    return [hit["id"] for query in json.loads(done.stdout) for hit in query["hits"]]


@pytest.mark.e2e
def test_onnx_answers_without_torch_and_as_torch_does(project):
    onnx = _search(project, "--runtime", "onnx")
    assert onnx.returncode == 0, onnx.stderr
    assert "LOADED=\n" in _said(onnx) or onnx.stderr.rstrip().endswith("LOADED=")
    assert "on onnx (export in" in _said(onnx)
    torch = _search(project, "--runtime", "torch")
    assert torch.returncode == 0, torch.stderr
    assert "on torch (asked for)" in _said(torch) and "torch" in _loaded(torch)
    assert len(_ids(onnx)) == 10 and _ids(onnx) == _ids(torch)
    scores = [[h["score"] for q in json.loads(d.stdout) for h in q["hits"]] for d in (onnx, torch)]
    assert scores[0] == pytest.approx(scores[1], abs=1e-5)


@pytest.mark.e2e
def test_auto_takes_the_cached_export_and_says_so(project):
    done = _search(project)
    assert done.returncode == 0, done.stderr
    assert "on onnx (export in" in _said(done) and "torch" not in _loaded(done)


@pytest.mark.e2e
def test_auto_without_an_export_runs_torch_and_says_why(project, tmp_path):
    done = _search(project, cache=tmp_path / "empty")
    assert done.returncode == 0, done.stderr
    assert "on torch (auto: no ONNX export of fingerprint" in _said(done)


@pytest.mark.e2e
def test_onnx_without_an_export_is_an_error_with_a_hint(project, tmp_path):
    done = _search(project, "--runtime", "onnx", cache=tmp_path / "empty")
    assert done.returncode == 1
    message = _said(done)
    assert "Error: --runtime onnx cannot run here: no ONNX export" in message
    assert f"Hint: Export the model first: clipkit export -m {TINY}" in message


@pytest.mark.e2e
def test_the_runtime_comes_from_the_environment(project):
    done = _search(project, env={"CLIPKIT_RUNTIME": "torch"})
    assert done.returncode == 0 and "on torch (asked for)" in _said(done)
    bad = _search(project, env={"CLIPKIT_RUNTIME": "tensorflow"})
    assert bad.returncode == 2


@pytest.mark.e2e
def test_a_damaged_cached_export_falls_back_under_auto_and_fails_under_onnx(project, tmp_path):
    _, cache = project
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    (folder,) = (path for path in copy.iterdir() if path.is_dir())
    text = folder / "text.onnx"
    text.write_bytes(text.read_bytes()[:1000])
    auto = _search(project, cache=copy)
    assert auto.returncode == 0 and "on torch (auto: the cached export is unusable" in " ".join(
        auto.stderr.split()
    )
    onnx = _search(project, "--runtime", "onnx", cache=copy)
    assert onnx.returncode == 1 and "truncated or damaged" in _said(onnx)


@pytest.mark.e2e
def test_index_fills_the_cache_so_the_first_search_runs_on_onnx(project, tmp_path):
    from typer.testing import CliRunner

    from clipkit import cli

    root, _ = project
    cache = tmp_path / "cache"
    env = {"CLIPKIT_ONNX_CACHE": str(cache)}
    runner = CliRunner()
    built = runner.invoke(
        cli.app, ["index", str(root / "emb"), "-o", str(tmp_path / "idx")], env=env
    )
    assert built.exit_code == 0, built.output
    assert "Exported the model to" in " ".join(built.stderr.split())
    again = runner.invoke(
        cli.app, ["index", str(root / "emb"), "-o", str(tmp_path / "idx2")], env=env
    )
    assert "The ONNX export for fast search is in" in " ".join(again.stderr.split())
    done = _search(project, cache=cache)
    assert done.returncode == 0 and "on onnx (export in" in _said(done)
    skipped = runner.invoke(
        cli.app,
        ["index", str(root / "emb"), "-o", str(tmp_path / "idx3"), "--no-onnx-export"],
        env={"CLIPKIT_ONNX_CACHE": str(tmp_path / "other")},
    )
    assert skipped.exit_code == 0 and not (tmp_path / "other").exists()


@pytest.mark.e2e
def test_exact_search_of_an_embeddings_folder_runs_without_torch(project):
    root, _ = project
    query = ["search", "a red circle", "--embeddings", str(root / "emb"), "-k", "5", "-f", "json"]
    onnx = _clipkit(project, *query, "--runtime", "onnx")
    assert onnx.returncode == 0, onnx.stderr
    assert _loaded(onnx) == ""
    torch = _clipkit(project, *query, "--runtime", "torch")
    assert len(_ids(onnx)) == 5 and _ids(onnx) == _ids(torch)


@pytest.mark.e2e
def test_zeroshot_of_an_embeddings_folder_runs_without_torch_and_as_torch_does(project):
    root, _ = project
    command = ["zeroshot", str(root / "emb"), "--labels", "red,green,blue,circle", "-f", "json"]
    onnx = _clipkit(project, *command, "--runtime", "onnx")
    assert onnx.returncode == 0, onnx.stderr
    assert _loaded(onnx) == ""
    assert "on onnx (export in" in _said(onnx)
    torch = _clipkit(project, *command, "--runtime", "torch")
    assert torch.returncode == 0, torch.stderr
    assert "torch" in _loaded(torch)
    got, want = (json.loads(done.stdout)["predictions"] for done in (onnx, torch))
    assert len(got) == 30 and [p["label"] for p in got] == [p["label"] for p in want]
    assert [p["confidence"] for p in got] == pytest.approx(
        [p["confidence"] for p in want], abs=1e-5
    )


@pytest.mark.e2e
def test_zeroshot_of_image_files_on_onnx_runs_without_torch_and_as_torch_does(project):
    root, _ = project
    command = [
        "zeroshot",
        str(root / "photos"),
        "--labels",
        "red,green,blue",
        "-m",
        TINY,
        "-f",
        "json",
    ]
    onnx = _clipkit(project, *command, "--runtime", "onnx", "--workers", "2")
    assert onnx.returncode == 0, onnx.stderr
    assert _loaded(onnx) == "" and "on onnx (export in" in _said(onnx)
    torch = _clipkit(project, *command, "--runtime", "torch", "--workers", "2")
    got, want = (json.loads(done.stdout)["predictions"] for done in (onnx, torch))
    assert len(got) == 30 and [p["label"] for p in got] == [p["label"] for p in want]
    assert [p["confidence"] for p in got] == pytest.approx(
        [p["confidence"] for p in want], abs=1e-5
    )


@pytest.mark.e2e
def test_audit_of_image_files_on_onnx_needs_no_open_clip(project, tmp_path):
    for n, path in enumerate(make_images(tmp_path / "pairs", 12)):
        path.with_suffix(".txt").write_text(f"a photo number {n} " + "word " * (n * 8))
    command = ["audit", str(tmp_path / "pairs"), "-m", TINY, "-f", "json", "--workers", "2"]
    onnx = _clipkit(project, *command, "--runtime", "onnx", "--long-captions", "chunk")
    assert onnx.returncode == 0, onnx.stderr
    assert _loaded(onnx) == "torch" and "on onnx (export in" in _said(onnx)
    torch = _clipkit(project, *command, "--runtime", "torch", "--long-captions", "chunk")
    got, want = (json.loads(done.stdout) for done in (onnx, torch))
    assert [p["suggested_caption"] for p in got["pairs"]] == [
        p["suggested_caption"] for p in want["pairs"]
    ]
    cosines = [[p["cosine"] for p in result["pairs"]] for result in (got, want)]
    assert cosines[0] == pytest.approx(cosines[1], abs=1e-5)
    assert got["summary"]["long_captions"] == want["summary"]["long_captions"] > 0


@pytest.mark.e2e
def test_audit_of_an_embeddings_folder_needs_no_open_clip_on_onnx(project, tmp_path):
    """Audit scores with torch, but of the model it needs only the tokenizer: on the ONNX
    runtime open_clip and torchvision stay unloaded, and the figures are torch's."""
    for n, path in enumerate(make_images(tmp_path / "pairs", 12)):
        path.with_suffix(".txt").write_text(f"a photo number {n} " + "word " * (n * 8))
    embed(
        EmbedConfig(
            sources=(str(tmp_path / "pairs"),),
            out_dir=tmp_path / "emb",
            model=TINY,
            device="cpu",
            workers=0,
        )
    )
    command = ["audit", str(tmp_path / "emb"), "-f", "json"]
    onnx = _clipkit(project, *command, "--runtime", "onnx")
    assert onnx.returncode == 0, onnx.stderr
    assert _loaded(onnx) == "torch" and "on onnx (export in" in _said(onnx)
    torch = _clipkit(project, *command, "--runtime", "torch")
    assert torch.returncode == 0, torch.stderr
    got, want = (json.loads(done.stdout) for done in (onnx, torch))
    assert got["pairs"] == want["pairs"] and len(got["pairs"]) == 12
    summaries = got["summary"], want["summary"]
    assert summaries[0]["long_captions"] == summaries[1]["long_captions"] > 0  # tokenizers agree


@pytest.mark.e2e
def test_embed_on_onnx_runs_without_torch_and_makes_torch_s_folder(project, tmp_path):
    """The same rows (cosine >= 0.99999), the same model stamp, and so the same index and
    top-10 search results as the folder torch made."""
    import numpy as np

    from clipkit import store
    from clipkit.search import SearchConfig, search

    root, _ = project
    out = tmp_path / "emb"
    command = ["embed", str(root / "photos"), "-o", str(out), "-m", TINY, "--workers", "2"]
    done = _clipkit(project, *command, "--runtime", "onnx")
    assert done.returncode == 0, done.stderr
    assert _loaded(done) == "" and "on onnx (export in" in _said(done)
    ours, theirs = rows(out), rows(root / "emb")
    assert sorted(ours) == sorted(theirs) and len(ours) == 31  # 30 images and the caption
    cosines = [float(np.dot(ours[i]["embedding"], theirs[i]["embedding"])) for i in ours]
    assert min(cosines) >= 0.99999
    assert store.read_stamp(out) == store.read_stamp(root / "emb")
    build_index(IndexConfig(emb_dir=out, out_dir=tmp_path / "idx", kind="image"))
    hits = []
    for index in (tmp_path / "idx", root / "idx"):
        config = SearchConfig(texts=("a red circle",), index_dir=index, k=10, runtime="torch")
        hits.append([hit.id for hit in search(config).results[0].hits])
    assert len(hits[0]) == 10 and hits[0] == hits[1]


@pytest.mark.e2e
def test_embed_on_onnx_without_an_export_of_the_spec_is_refused(project, tmp_path):
    root, _ = project
    command = ["embed", str(root / "photos"), "-o", str(tmp_path / "emb"), "-m", TINY]
    done = _clipkit(project, *command, "--runtime", "onnx", cache=tmp_path / "empty")
    assert done.returncode == 1
    message = _said(done)
    assert f"Error: --runtime onnx cannot run here: {TINY} has no ONNX export" in message
    assert f"Hint: Export the model first: clipkit export -m {TINY}" in message
    assert not (tmp_path / "emb").exists()


def test_auto_embeds_on_onnx_on_the_cpu_and_on_torch_where_a_gpu_is(project, monkeypatch):
    from clipkit.models import runtime

    _, cache = project
    monkeypatch.setenv("CLIPKIT_ONNX_CACHE", str(cache))
    encoder, choice = runtime.load_encoder(TINY, runtime="auto", bulk=True)
    assert choice.runtime == "onnx" and encoder.bulk
    monkeypatch.setattr(runtime, "_gpu_present", lambda: True)
    encoder, choice = runtime.load_encoder(TINY, runtime="auto")
    assert choice == runtime.RuntimeChoice(
        "torch", "auto: a GPU is present, and torch runs the model on it"
    )
    encoder, choice = runtime.load_encoder(TINY, runtime="onnx", device="cpu")
    assert choice.runtime == "onnx"


def test_a_checkpoint_spec_finds_its_export_until_the_checkpoint_changes(tmp_path, monkeypatch):
    from clipkit.models.exported import fingerprint_of_spec, remember_spec

    monkeypatch.setenv("CLIPKIT_ONNX_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"weights")
    remember_spec(str(checkpoint), "0123456789abcdef")
    monkeypatch.chdir(tmp_path)  # the spec as a relative path names the same checkpoint
    assert fingerprint_of_spec("model.safetensors") == "0123456789abcdef"
    assert fingerprint_of_spec(f"ViT-B-32:{checkpoint}") is None  # another spec
    checkpoint.write_bytes(b"retrained weights")
    assert fingerprint_of_spec(str(checkpoint)) is None
    (tmp_path / "cache" / "specs.json").write_text("{not json")
    assert fingerprint_of_spec(str(checkpoint)) is None


def test_the_recorded_model_however_named_runs_on_onnx(
    cached_tiny_export, tiny_encoder, tmp_path, monkeypatch
):
    """#40 item 1: `-m runs/tux` (relative) named the model an index records as
    /abs/runs/tux and lost the fast path; so did another file of the same weights."""
    from clipkit.models import runtime
    from clipkit.models.checkpoints import write_checkpoint
    from clipkit.models.exported import remember_spec

    state, meta = tiny_encoder.model.state_dict(), tiny_encoder.checkpoint_meta()
    recorded = write_checkpoint(tmp_path / "run" / "best.safetensors", state, meta)
    fingerprint = tiny_encoder.fingerprint
    remember_spec(str(recorded), fingerprint)  # as `clipkit index` leaves it
    monkeypatch.chdir(tmp_path)
    for given in ("run/best.safetensors", "./run/../run/best.safetensors"):
        _, choice = runtime.load_matching_encoder(str(recorded), fingerprint, spec=given)
        assert choice.runtime == "onnx", (given, choice)
    copy = write_checkpoint(tmp_path / "copy.safetensors", state, meta)
    _, choice = runtime.load_matching_encoder(str(recorded), fingerprint, spec=str(copy))
    assert choice.reason.startswith("auto: -m ")  # unknown to the cache: only torch can tell
    remember_spec(str(copy), fingerprint)  # exported (or indexed) once under this name
    _, choice = runtime.load_matching_encoder(str(recorded), fingerprint, spec=str(copy))
    assert choice.runtime == "onnx"


@pytest.mark.parametrize("command", ["search", "zeroshot", "audit", "train"])
def test_a_command_parses_its_model_spec_once(command, tiny_encoder, tmp_path, monkeypatch):
    """The config parses -m once and every step gets the ModelSpec (the export lookup, the
    checkpoint's files and the loader each parsed it again before)."""
    from clipkit.audit import AuditConfig, audit
    from clipkit.models.checkpoints import write_checkpoint
    from clipkit.search import SearchConfig, search
    from clipkit.train import TrainConfig, train
    from clipkit.zeroshot import ZeroShotConfig, zeroshot

    meta = tiny_encoder.checkpoint_meta()
    model = str(write_checkpoint(tmp_path / "m.safetensors", tiny_encoder.model.state_dict(), meta))
    for n, image in enumerate(make_images(tmp_path / "photos", 4)):
        image.with_suffix(".txt").write_text(f"a shape number {n}")
    embed(EmbedConfig(sources=(str(tmp_path / "photos"),), out_dir=tmp_path / "emb",
                      model=model, workers=0, device="cpu"))  # fmt: skip
    parsed = count_spec_parses(monkeypatch)
    common = {"model": model, "device": "cpu"}
    {
        "search": lambda: search(
            SearchConfig(texts=("a shape",), embeddings_dir=tmp_path / "emb", **common)
        ),
        "zeroshot": lambda: zeroshot(
            ZeroShotConfig(images=tmp_path / "photos", labels="a,b", workers=0, **common)
        ),
        "audit": lambda: audit(AuditConfig(data=tmp_path / "photos", workers=0, **common)),
        "train": lambda: train(
            TrainConfig(
                data=str(tmp_path / "photos"),
                out=str(tmp_path / "run"),
                steps=1,
                batch_size=2,
                val_split=0.0,
                workers=0,
                **common,
            )  # fmt: skip
        ),
    }[command]()
    assert parsed == [model]
