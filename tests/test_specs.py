"""The model spec grammar: every form parses to the right kind and parts; bad strings fail."""

from __future__ import annotations

from pathlib import Path

import pytest

from clipkit.errors import ModelSpecError
from clipkit.models.specs import SpecKind, parse_spec
from tests.helpers import TINY


@pytest.mark.parametrize(
    ("text", "kind", "arch", "tag"),
    [
        ("ViT-B-32", SpecKind.PRETRAINED, "ViT-B-32", None),
        ("ViT-B-32:laion2b_s34b_b79k", SpecKind.PRETRAINED, "ViT-B-32", "laion2b_s34b_b79k"),
        ("  ViT-B-32:openai ", SpecKind.PRETRAINED, "ViT-B-32", "openai"),
        ("ViT-B/32:openai", SpecKind.PRETRAINED, "ViT-B/32", "openai"),
        (TINY, SpecKind.RANDOM, "clipkit-tiny", None),
    ],
)
def test_architecture_forms(text, kind, arch, tag):
    spec = parse_spec(text)
    assert (spec.kind, spec.arch, spec.tag, spec.path) == (kind, arch, tag, None)
    assert spec.text == text.strip()


def test_hf_hub_form():
    spec = parse_spec("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K")
    assert spec.kind is SpecKind.HF_HUB
    assert spec.hub_id == "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"


@pytest.mark.parametrize("text", ["hf-hub:", "hf-hub:laion", "hf-hub:a/b/c", "hf-hub:/repo"])
def test_bad_hf_hub_forms(text):
    with pytest.raises(ModelSpecError, match="Hugging Face"):
        parse_spec(text)


@pytest.mark.parametrize("name", ["model.safetensors", "model.pt", "weights.PTH", "x.bin"])
def test_checkpoint_suffix_is_a_path_even_when_missing(name):
    spec = parse_spec(name)
    assert spec.kind is SpecKind.CHECKPOINT
    assert spec.path == Path(name)
    assert spec.arch is None


def test_existing_folder_is_a_run_path(tmp_path):
    run = tmp_path / "runs" / "exp1"
    run.mkdir(parents=True)
    spec = parse_spec(str(run))
    assert spec.kind is SpecKind.CHECKPOINT and spec.path == run


def test_relative_and_home_paths(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert parse_spec("./runs/exp").kind is SpecKind.CHECKPOINT
    assert parse_spec("~/model").path == tmp_path / "model"


def test_arch_with_checkpoint_path():
    spec = parse_spec("ViT-B-32:/data/epoch_3.pt")
    assert spec.kind is SpecKind.CHECKPOINT
    assert (spec.arch, spec.path) == ("ViT-B-32", Path("/data/epoch_3.pt"))


@pytest.mark.parametrize("text", ["", "   ", ":openai", "ViT-B-32:", "ViT-B-32:  "])
def test_malformed_specs(text):
    with pytest.raises(ModelSpecError) as info:
        parse_spec(text)
    assert info.value.hint and "clipkit models" in info.value.hint


def test_artifacts_record_checkpoint_paths_absolute(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    assert parse_spec("run").recorded == str(tmp_path / "run")
    assert parse_spec("./w/../m.pt").recorded == str(tmp_path / "m.pt")
    assert parse_spec("ViT-B-32:ck/e.pt").recorded == f"ViT-B-32:{tmp_path / 'ck' / 'e.pt'}"
    for text in ("ViT-B-32:openai", TINY, "hf-hub:a/b", "/abs/m.safetensors"):
        assert parse_spec(text).recorded == text
