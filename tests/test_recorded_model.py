"""The model an artifact records loads from any working folder: a checkpoint given by a
relative path is recorded absolute, and a recorded model that no longer loads is an error that
says to pass it with -m (a relative path recorded by an older clipkit, a moved checkpoint)."""

from __future__ import annotations

import shutil

import pytest
from typer.testing import CliRunner

from clipkit import cli, store
from clipkit.embed import EmbedConfig, embed
from clipkit.index import IndexConfig, build_index
from clipkit.models.checkpoints import write_checkpoint
from clipkit.search import SearchConfig, search
from clipkit.zeroshot import ZeroShotConfig, zeroshot
from tests.helpers import make_images

runner = CliRunner()


@pytest.fixture
def project(tmp_path, tiny_encoder, monkeypatch):
    """A checkpoint in project/run, embeddings and an index made from inside project/ with
    the relative spec "run"."""
    root = tmp_path / "project"
    write_checkpoint(
        root / "run" / "best.safetensors",
        tiny_encoder.model.state_dict(),
        tiny_encoder.checkpoint_meta(),
    )
    make_images(root / "photos", 4)
    monkeypatch.chdir(root)
    embed(
        EmbedConfig(sources=("photos",), out_dir=root / "emb", model="run", workers=0, device="cpu")
    )
    build_index(IndexConfig(emb_dir=root / "emb", out_dir=root / "idx"))
    return root


def test_a_relative_checkpoint_spec_is_recorded_absolute(project, tmp_path, monkeypatch):
    assert store.read_stamp(project / "emb").spec == str(project / "run")
    monkeypatch.chdir(tmp_path)  # elsewhere: "run" names nothing here
    found = search(
        SearchConfig(
            images=(project / "photos" / "img0001.png",),
            index_dir=project / "idx",
            k=1,
            device="cpu",
        )
    )
    assert found.results[0].hits[0].uri == "photos/img0001.png"
    labelled = zeroshot(
        ZeroShotConfig(images=project / "emb", labels="cat,dog", workers=0, device="cpu")
    )
    assert len(labelled.predictions) == 4


def test_a_recorded_model_that_no_longer_loads_asks_for_m(project, tmp_path, monkeypatch):
    # What an older clipkit wrote: the spec as typed, relative to where embed ran.
    stamp = store.read_stamp(project / "emb")
    shard = store.list_shards(project / "emb")[0]
    table = store.pq.read_table(shard)
    metadata = {**_unsealed(table.schema.metadata), b"clipkit.model": b"run"}
    store.pq.write_table(table.replace_schema_metadata(metadata), shard)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(
        cli.app,
        [
            "search",
            "a dog",
            "--embeddings",
            str(project / "emb"),
            "--device",
            "cpu",
            "--runtime",
            "torch",
        ],
    )
    said = " ".join(result.output.split())  # rich wraps long lines
    assert result.exit_code == 1
    assert "Error: The model recorded with this data, run, does not load" in said
    assert (
        f"Hint: Pass it with -m (any spec of the same model, fingerprint {stamp.fingerprint})"
        in said
    )
    assert "Traceback" not in said
    # Given with -m, from here, it loads (and its fingerprint is checked).
    given = runner.invoke(
        cli.app,
        [
            "search",
            "a dog",
            "--embeddings",
            str(project / "emb"),
            "-m",
            str(project / "run"),
            "--device",
            "cpu",
        ],
    )
    assert given.exit_code == 0, given.output
    # A moved checkpoint: the absolute path recorded now names nothing either.
    shutil.move(project / "run", tmp_path / "moved")
    moved = runner.invoke(
        cli.app, ["zeroshot", str(project / "emb"), "--labels", "cat,dog", "--device", "cpu"]
    )
    assert moved.exit_code == 1 and "does not load" in moved.output


def test_a_cached_export_answers_where_the_recorded_spec_no_longer_loads(
    project, tmp_path, monkeypatch, cached_tiny_export
):
    """The export is the same model by fingerprint: ``auto`` needs no spec that loads."""
    shard = store.list_shards(project / "emb")[0]
    table = store.pq.read_table(shard)
    metadata = {**_unsealed(table.schema.metadata), b"clipkit.model": b"run"}
    store.pq.write_table(table.replace_schema_metadata(metadata), shard)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(cli.app, ["search", "a dog", "--embeddings", str(project / "emb")])
    assert result.exit_code == 0, result.output
    assert "on onnx (export in" in " ".join(result.stderr.split())


def _unsealed(metadata):
    """A shard's metadata as a clipkit from before footer seals wrote it."""
    from clipkit.store.parquet import SEAL_KEY

    return {key: value for key, value in metadata.items() if key != SEAL_KEY}
