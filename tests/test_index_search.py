"""``clipkit index`` and ``clipkit search``: planted queries, formats, HTML escaping, --update,
automatic index choice with measured recall, and every bad input the issue names."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from clipkit import cli, store
from clipkit.embed import EmbedConfig, embed
from clipkit.errors import InputError, UsageError
from clipkit.index import IndexConfig, build_index, load_index
from clipkit.search import SearchConfig, search
from clipkit.search.run import combine
from tests.helpers import TINY, clustered_embeddings, make_images

runner = CliRunner()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """12 images and 3 captions (one of them hostile HTML), embedded with the tiny model."""
    root = tmp_path_factory.mktemp("corpus")
    make_images(root / "data", 12, size=(48, 48))
    (root / "data" / "evil.txt").write_text("<script>alert(1)</script>")
    (root / "data" / "dog.txt").write_text("a photo of a dog")
    (root / "data" / "cat.txt").write_text("a photo of a cat")
    embed(
        EmbedConfig(
            sources=(str(root / "data"),), out_dir=root / "emb", model=TINY, device="cpu", workers=0
        )
    )
    build_index(IndexConfig(emb_dir=root / "emb", out_dir=root / "index"))
    return root


def test_an_image_searched_by_itself_ranks_first(corpus):
    for path in sorted((corpus / "data").glob("img*"))[:4]:
        result = search(SearchConfig(images=(path,), index_dir=corpus / "index", k=3, device="cpu"))
        top = result.results[0].hits[0]
        assert top.uri == str(path) and top.score == pytest.approx(1.0, abs=1e-4)


def test_a_query_image_may_come_from_a_pipe(corpus, tmp_path):
    """``--image <(curl …)``: a named query is read even when it is not a regular file (only
    inputs found by walking a folder must be)."""
    image = sorted((corpus / "data").glob("img*"))[1]
    pipe = tmp_path / "query"
    os.mkfifo(pipe)
    feeder = threading.Thread(target=lambda: pipe.write_bytes(image.read_bytes()), daemon=True)
    feeder.start()
    result = search(SearchConfig(images=(pipe,), index_dir=corpus / "index", k=1, device="cpu"))
    feeder.join(10)
    assert result.results[0].hits[0].uri == str(image)


def test_text_search_finds_the_planted_caption(corpus):
    result = search(
        SearchConfig(
            texts=("a photo of a dog",),
            embeddings_dir=corpus / "emb",
            kind="text",
            k=2,
            device="cpu",
        )
    )
    assert result.results[0].hits[0].text == "a photo of a dog"
    assert result.results[0].hits[0].score == pytest.approx(1.0, abs=1e-4)


def test_index_records_what_it_is(corpus):
    info = json.loads((corpus / "index" / "index.json").read_text())
    assert info["factory"] == "Flat" and info["rows"] == 12 and info["kind"] == "image"
    assert info["model"] == TINY and info["dim"] == 128 and info["metric"] == "inner_product"
    assert info["recall_at_10"]["same_kind"] == 1.0  # exact search
    assert info["recall_at_10"]["cross_modal"] == 1.0  # captions were queried too
    assert [s["name"] for s in info["shards"]] == ["part-00000.parquet"]


def test_index_and_exact_search_agree(corpus):
    common = {"texts": ("a photo of a cat",), "k": 12, "device": "cpu"}
    from_index = search(SearchConfig(index_dir=corpus / "index", **common))
    exact = search(SearchConfig(embeddings_dir=corpus / "emb", kind="image", **common))
    assert [h.id for h in from_index.results[0].hits] == [h.id for h in exact.results[0].hits]


def test_weighted_and_negative_queries_follow_the_definition(corpus, tiny_encoder):
    image = sorted((corpus / "data").glob("img*"))[0]
    result = search(
        SearchConfig(
            texts=("a photo of a dog",),
            images=(image,),
            weights=(1, -0.5),
            embeddings_dir=corpus / "emb",
            k=15,
            device="cpu",
        )
    )
    from PIL import Image

    text = tiny_encoder.encode_texts(["a photo of a dog"])[0]
    pixels = tiny_encoder.preprocess_image(Image.open(image).convert("RGB")).unsqueeze(0)
    query = torch.nn.functional.normalize(text - 0.5 * tiny_encoder.encode_images(pixels)[0], dim=0)
    stored = {
        row["id"]: np.array(row["embedding"])
        for block in store.iter_embeddings(corpus / "emb")
        for row in block.to_pylist()
    }
    for hit in result.results[0].hits:
        assert hit.score == pytest.approx(float(query.numpy() @ stored[hit.id]), abs=1e-5)
    assert "-0.5×image:" in result.results[0].query


def test_batch_queries_give_one_block_each(corpus, tmp_path):
    queries = tmp_path / "q.txt"
    queries.write_text("a photo of a dog\n\na photo of a cat\n")
    result = runner.invoke(
        cli.app,
        [
            "search",
            "--queries",
            str(queries),
            "--embeddings",
            str(corpus / "emb"),
            "--kind",
            "text",
            "-k",
            "1",
            "-f",
            "json",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    blocks = json.loads(result.stdout)
    assert [b["query"] for b in blocks] == ["a photo of a dog", "a photo of a cat"]
    assert [b["hits"][0]["text"] for b in blocks] == ["a photo of a dog", "a photo of a cat"]


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv", "table"])
def test_output_formats_parse(corpus, fmt):
    result = runner.invoke(
        cli.app,
        [
            "search",
            "a cat",
            "--index",
            str(corpus / "index"),
            "-k",
            "3",
            "-f",
            fmt,
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    if fmt == "json":
        assert len(json.loads(result.stdout)[0]["hits"]) == 3
    elif fmt == "jsonl":
        assert [json.loads(line)["rank"] for line in result.stdout.splitlines()] == [1, 2, 3]
    elif fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(result.stdout)))
        assert [r["rank"] for r in rows] == ["1", "2", "3"] and rows[0]["query"] == "a cat"
    else:
        assert "rank" in result.stdout and "score" in result.stdout


def test_html_gallery_escapes_captions_and_embeds_thumbnails(corpus, tmp_path):
    page = tmp_path / "g.html"
    result = runner.invoke(
        cli.app,
        [
            "search",
            "<b>x</b>",
            "--embeddings",
            str(corpus / "emb"),
            "-k",
            "15",
            "--kind",
            "all",  # the captions too: a text query finds images by default
            "-f",
            "json",
            "--html",
            str(page),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    text = page.read_text()
    assert "<script>alert(1)</script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&lt;b&gt;x&lt;/b&gt;" in text and "<b>x</b>" not in text
    assert text.count("data:image/jpeg;base64,") == 12
    assert text.count('class="card"') == 15
    assert "http://" not in text and "https://" not in text


def test_update_adds_only_new_rows(tmp_path):
    make_images(tmp_path / "d", 5)
    cfg = EmbedConfig(
        sources=(str(tmp_path / "d"),),
        out_dir=tmp_path / "emb",
        model=TINY,
        device="cpu",
        workers=0,
    )
    embed(cfg)
    first = build_index(IndexConfig(emb_dir=tmp_path / "emb", out_dir=tmp_path / "idx"))
    make_images(tmp_path / "d", 3, start=5)
    embed(cfg)
    with pytest.raises(InputError, match="changed since the index was built"):
        load_index(tmp_path / "idx")
    updated = build_index(
        IndexConfig(emb_dir=tmp_path / "emb", out_dir=tmp_path / "idx", update=True)
    )
    assert (first.added, updated.added, updated.removed, updated.info.rows) == (5, 3, 0, 8)
    loaded = load_index(tmp_path / "idx")
    assert len(set(loaded.rows.column("id"))) == 8
    again = build_index(
        IndexConfig(emb_dir=tmp_path / "emb", out_dir=tmp_path / "idx", update=True)
    )
    assert again.added == 0


def test_an_index_outlives_its_embeddings_folder(corpus, tmp_path):
    """Copied to another place and its embeddings deleted, an index still answers alone."""
    shutil.copytree(corpus / "emb", tmp_path / "emb")
    build_index(IndexConfig(emb_dir=tmp_path / "emb", out_dir=tmp_path / "idx"))
    shutil.copytree(tmp_path / "idx", tmp_path / "server" / "idx")
    shutil.rmtree(tmp_path / "emb")
    image = sorted((corpus / "data").glob("img*"))[2]
    result = search(
        SearchConfig(images=(image,), index_dir=tmp_path / "server" / "idx", k=1, device="cpu")
    )
    assert result.results[0].hits[0].uri == str(image)
    (tmp_path / "emb").mkdir()  # the folder is back with other shards: stale, refused
    shutil.copy(corpus / "emb" / "part-00000.parquet", tmp_path / "emb" / "part-00001.parquet")
    with pytest.raises(InputError, match="changed since the index was built"):
        load_index(tmp_path / "server" / "idx")


def test_fingerprint_mismatch_is_refused(corpus, tmp_path, tiny_encoder):
    from clipkit.models.checkpoints import write_checkpoint

    state = {
        k: v * 1.01 if v.is_floating_point() else v
        for k, v in tiny_encoder.model.state_dict().items()
    }
    other = write_checkpoint(tmp_path / "o.safetensors", state, tiny_encoder.checkpoint_meta())
    with pytest.raises(InputError, match="fingerprint") as info:
        search(
            SearchConfig(texts=("x",), index_dir=corpus / "index", model=str(other), device="cpu")
        )
    assert f"This data was made by {TINY} (fingerprint {tiny_encoder.fingerprint})" in str(
        info.value.message
    )
    assert f"-m {other} is another model" in info.value.message
    assert info.value.hint == f"Leave out -m to use {TINY}, or embed again with {other}."


def test_a_recorded_spec_that_now_loads_other_weights_is_named_so(corpus, tmp_path, tiny_encoder):
    """#24 D15: the hint said "Use -m clipkit-small:random" to a user who had passed exactly
    that: the same spec loaded another model (here: a checkpoint replaced since)."""
    from clipkit.models.checkpoints import write_checkpoint
    from clipkit.models.openclip import load_matching_model, load_model

    path = tmp_path / "model.safetensors"
    write_checkpoint(path, tiny_encoder.model.state_dict(), tiny_encoder.checkpoint_meta())
    recorded = load_model(str(path), device="cpu").fingerprint
    state = {
        k: v * 1.01 if v.is_floating_point() else v
        for k, v in tiny_encoder.model.state_dict().items()
    }
    write_checkpoint(path, state, tiny_encoder.checkpoint_meta())  # retrained in place
    for asked in (None, str(path)):
        with pytest.raises(InputError) as info:
            load_matching_model(str(path), recorded, spec=asked, device="cpu")
        assert f"{path} now loads another model" in info.value.message
        assert f"-m {path}" not in info.value.hint and f"fingerprint {recorded}" in info.value.hint


def test_auto_choice_and_recorded_recall_on_clustered_data(tmp_path, tiny_encoder):
    stamp = store.ModelStamp(TINY, tiny_encoder.fingerprint, 64)
    points = clustered_embeddings(tmp_path / "emb", stamp, count=6000, clusters=40, dim=64)
    result = build_index(
        IndexConfig(emb_dir=tmp_path / "emb", out_dir=tmp_path / "idx", flat_threshold=1000)
    )
    info = result.info
    assert info.factory.startswith("IVF") and info.factory.endswith(",Flat")
    assert "nprobe" in info.params
    assert info.recall_at_10["same_kind"] >= 0.95 and info.recall_at_10["cross_modal"] is None
    # Independent check of the recorded recall on fresh queries near the data.
    rng = np.random.default_rng(7)
    queries = points[rng.integers(0, len(points), 200)] + 0.05 * rng.standard_normal((200, 64))
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    truth = np.argsort(-(queries @ points.T), axis=1, kind="stable")[:, :10]
    _, found = load_index(tmp_path / "idx").search(queries, 10)
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)])
    assert recall >= 0.9
    budget = 6000 * 64 * 2  # room for 8-bit codes, not for float32 vectors
    small_budget = build_index(
        IndexConfig(
            emb_dir=tmp_path / "emb",
            out_dir=tmp_path / "i2",
            flat_threshold=1000,
            max_memory=budget,
        )
    )
    assert ",SQ8" in small_budget.info.factory


def test_explicit_types(tmp_path, tiny_encoder):
    stamp = store.ModelStamp(TINY, tiny_encoder.fingerprint, 32)
    clustered_embeddings(tmp_path / "emb", stamp, count=3000, clusters=20, dim=32)
    for kind, expected in (("flat", "Flat"), ("hnsw", "HNSW32,Flat"), ("ivfpq", ",PQ")):
        info = build_index(
            IndexConfig(emb_dir=tmp_path / "emb", out_dir=tmp_path / kind, index_type=kind)
        ).info
        assert expected in info.factory
        assert info.recall_at_10["same_kind"] is not None


def test_bad_indexes_and_queries(corpus, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(corpus / "index", broken)
    (broken / "index.faiss").write_bytes(b"garbage")
    cases = [
        (SearchConfig(texts=("x",), index_dir=tmp_path / "missing"), "not a clipkit index"),
        (SearchConfig(texts=("x",), index_dir=broken), "index.faiss is damaged"),
        (SearchConfig(texts=("x",), index_dir=corpus / "index", k=0), "-k must be at least 1"),
        (SearchConfig(images=(tmp_path / "nope.png",), index_dir=corpus / "index"), "unreadable"),
        (SearchConfig(index_dir=corpus / "index"), "No query given"),
        (SearchConfig(texts=("x",), weights=(1, 2), index_dir=corpus / "index"), "2 weights"),
        (
            SearchConfig(texts=("x",), index_dir=corpus / "index", embeddings_dir=corpus / "emb"),
            "exactly one of",
        ),
        (SearchConfig(texts=("",), index_dir=corpus / "index"), "text query is empty"),
        (SearchConfig(texts=(" \t ",), index_dir=corpus / "index"), "text query is empty"),
        (
            SearchConfig(texts=("x",), weights=(float("inf"),), index_dir=corpus / "index"),
            "must be finite",
        ),
        (
            SearchConfig(
                texts=("x",),
                images=(corpus / "data" / "img0000.jpg",),
                weights=(1, float("nan")),
                index_dir=corpus / "index",
            ),
            "must be finite",
        ),
    ]
    for config, match in cases:
        with pytest.raises(InputError, match=match):
            search(config)
    (broken / "index.json").write_text("{not json")
    with pytest.raises(InputError, match="corrupt"):
        load_index(broken)


def test_empty_embeddings_and_wrong_kind(tmp_path, corpus):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no embeddings"):
        build_index(IndexConfig(emb_dir=tmp_path / "empty", out_dir=tmp_path / "i"))
    with pytest.raises(InputError, match="holds no embeddings"):
        search(SearchConfig(texts=("x",), embeddings_dir=tmp_path / "empty", device="cpu"))
    images_only = tmp_path / "images_only"
    make_images(tmp_path / "imgs", 2)
    embed(
        EmbedConfig(
            sources=(str(tmp_path / "imgs"),),
            out_dir=images_only,
            model=TINY,
            device="cpu",
            workers=0,
        )
    )
    with pytest.raises(InputError, match="holds no text embeddings"):
        search(SearchConfig(texts=("x",), embeddings_dir=images_only, kind="text", device="cpu"))
    with pytest.raises(InputError, match="holds no text embeddings"):
        build_index(IndexConfig(emb_dir=images_only, out_dir=tmp_path / "i2", kind="text"))


def test_cli_index_and_errors(corpus, tmp_path, cached_tiny_export):
    result = runner.invoke(cli.app, ["index", str(corpus / "emb"), "-o", str(tmp_path / "i")])
    assert result.exit_code == 0, result.output
    assert "Index Flat (exact) of 12 image rows" in result.stderr
    bad = runner.invoke(cli.app, ["search", "x", "--index", str(tmp_path / "nope")])
    assert bad.exit_code == 1 and "Error:" in bad.stderr and "Hint:" in bad.stderr
    size = runner.invoke(cli.app, ["index", str(corpus / "emb"), "--max-memory", "lots"])
    assert size.exit_code == 2


def test_flat_index_small_and_large_batches_agree(tmp_path, tiny_encoder):
    # Fewer than SMALL_BATCH queries go through exact_topk (NumPy), more through faiss.
    from clipkit.index.load import SMALL_BATCH

    stamp = store.ModelStamp(TINY, tiny_encoder.fingerprint, 32)
    points = clustered_embeddings(tmp_path / "emb", stamp, count=2000, clusters=10, dim=32)
    build_index(IndexConfig(emb_dir=tmp_path / "emb", out_dir=tmp_path / "idx"))
    loaded = load_index(tmp_path / "idx")
    assert loaded.vectors is not None
    queries = points[: SMALL_BATCH + 5]
    big_scores, big_found = loaded.search(queries, 7)
    small_scores, small_found = loaded.search(queries[:5], 7)
    np.testing.assert_array_equal(small_found, big_found[:5])
    np.testing.assert_allclose(small_scores, big_scores[:5], atol=1e-5)
    truth = np.argsort(-(queries[:5] @ points.T), axis=1, kind="stable")[:, :7]
    np.testing.assert_array_equal(small_found, truth)


def test_empty_index_and_missing_row_map(corpus, tmp_path):
    import faiss

    empty = tmp_path / "empty"
    shutil.copytree(corpus / "index", empty)
    faiss.write_index(faiss.IndexFlatIP(128), str(empty / "index.faiss"))
    store.write_row_map(empty / "rows.parquet", {"id": [], "uri": [], "kind": [], "text": []})
    info = json.loads((empty / "index.json").read_text())
    # as an index made before the sidecar recorded checksums (files: {}), read unchecked
    (empty / "index.json").write_text(json.dumps({**info, "rows": 0, "files": {}}))
    with pytest.raises(InputError, match="is empty"):
        load_index(empty)
    no_rows = tmp_path / "no_rows"
    shutil.copytree(corpus / "index", no_rows)
    (no_rows / "rows.parquet").unlink()
    with pytest.raises(InputError, match="row map .* is missing or unreadable"):
        load_index(no_rows)
    result = runner.invoke(cli.app, ["search", "x", "--index", str(no_rows)])
    assert result.exit_code == 1 and "Error:" in result.stderr and "Hint:" in result.stderr


def _corrupt_copy(
    source: Path,
    target: Path,
    *,
    null_row: int | None = None,
    nan_row: int | None = None,
    flipped_row: int | None = None,
) -> Path:
    """A copy of an embeddings folder whose first shard has a null, a NaN and/or a bit-flipped
    embedding (the top bit of a float32's exponent: a value of about 1e37)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    shutil.copytree(source, target)
    shard = store.list_shards(target)[0]
    table = pq.read_table(shard)
    column = table.column("embedding").combine_chunks()
    values = column.values.to_numpy(zero_copy_only=False).copy().reshape(len(column), -1)
    if nan_row is not None:
        values[nan_row, 3] = np.nan
    if flipped_row is not None:
        assert values.dtype == np.float32
        values.view(np.uint32)[flipped_row, 3] ^= np.uint32(1 << 30)
        assert np.isfinite(values[flipped_row]).all() and abs(values[flipped_row, 3]) > 1e30
    nulls = None if null_row is None else pa.array([i == null_row for i in range(len(column))])
    flat = pa.array(values.ravel(), column.type.value_type)
    broken = pa.FixedSizeListArray.from_arrays(flat, values.shape[1], mask=nulls)
    position = table.schema.get_field_index("embedding")
    pq.write_table(table.set_column(position, table.schema.field("embedding"), broken), shard)
    return shard


@pytest.mark.parametrize(  # rows 0-2 are the corpus's texts, the rest its images
    "damage",
    [
        {"nan_row": 4},
        {"null_row": 3},
        {"null_row": 0, "nan_row": 5},
        {"nan_row": 2},
        {"flipped_row": 4},
        {"flipped_row": 1},
        {"null_row": 1, "nan_row": 2, "flipped_row": 0},
    ],
)
def test_missing_non_finite_or_damaged_embeddings_are_refused_by_name(corpus, tmp_path, damage):
    # A NaN row used to rank first in every search; a null one ended in an IndexError; a
    # flipped bit (#24 D2) ranked first for every query with a score of 1.9e36.
    shard = _corrupt_copy(corpus / "emb", tmp_path / "emb", **damage)
    bad_rows = sorted(damage.values())
    first_uri = next(store.iter_embeddings(corpus / "emb", ("uri",))).column("uri")[bad_rows[0]]
    counts = [
        f"1 {what}"
        for key, what in (
            ("null_row", "missing"),
            ("nan_row", "not finite \\(NaN or inf\\)"),
            ("flipped_row", "not of unit norm \\(a norm of [0-9.e+]+: a damaged file\\)"),
        )
        if key in damage
    ]
    expected = (
        f"holds embeddings that are {', '.join(counts)}; the first for {re.escape(str(first_uri))}"
    )
    with pytest.raises(InputError, match=expected) as refused:
        build_index(IndexConfig(emb_dir=tmp_path / "emb", out_dir=tmp_path / "i"))
    assert shard.name in refused.value.hint and "clipkit embed" in refused.value.hint
    assert not (tmp_path / "i" / "index.faiss").exists()
    with pytest.raises(InputError, match=expected):
        search(
            SearchConfig(texts=("x",), embeddings_dir=tmp_path / "emb", kind="all", device="cpu")
        )
    cli_result = runner.invoke(cli.app, ["index", str(tmp_path / "emb"), "-o", str(tmp_path / "j")])
    assert cli_result.exit_code == 1 and "Error:" in cli_result.stderr
    assert "Traceback" not in cli_result.output
    # Only the rows a command reads are checked: damaged images do not stop a text search.
    kinds = next(store.iter_embeddings(corpus / "emb", ("kind",))).column("kind").to_pylist()
    text_search = SearchConfig(
        texts=("a photo of a dog",), embeddings_dir=tmp_path / "emb", kind="text", k=1, device="cpu"
    )
    if any(kinds[row] == "text" for row in bad_rows):
        with pytest.raises(InputError, match="holds embeddings that are 1 "):
            search(text_search)
    else:
        assert search(text_search).results[0].hits[0].text == "a photo of a dog"


def test_a_bad_embedding_in_a_later_batch_is_named_by_its_own_uri(corpus, tmp_path):
    # An exact scan reads a batch's uris only to name a bad row: from the right offset.
    _corrupt_copy(corpus / "emb", tmp_path / "emb", nan_row=5)
    uris = next(store.iter_embeddings(corpus / "emb", ("uri",))).column("uri").to_pylist()
    with pytest.raises(InputError, match=f"the first for {re.escape(uris[5])}"):
        list(store.iter_ids_and_vectors(tmp_path / "emb", batch_rows=2))


def test_corrupt_shard_repaired_by_deleting_it_and_embedding_again(tmp_path):
    make_images(tmp_path / "imgs", 4)
    config = EmbedConfig(
        sources=(str(tmp_path / "imgs"),),
        out_dir=tmp_path / "emb",
        model=TINY,
        device="cpu",
        workers=0,
    )
    embed(config)
    shutil.move(tmp_path / "emb", tmp_path / "clean")
    shard = _corrupt_copy(tmp_path / "clean", tmp_path / "emb", nan_row=0)
    with pytest.raises(InputError):
        build_index(IndexConfig(emb_dir=tmp_path / "emb", out_dir=tmp_path / "i"))
    shard.unlink()  # what the hint says to do
    assert embed(config).embedded == 4
    assert build_index(IndexConfig(emb_dir=tmp_path / "emb", out_dir=tmp_path / "i")).info.rows == 4


def test_exact_index_of_fewer_rows_than_k_records_full_recall(tmp_path, tiny_encoder):
    # Leave-one-out over 6 rows leaves 5 true neighbours, not 10: recall is 5/5, not 5/10.
    stamp = store.ModelStamp(TINY, tiny_encoder.fingerprint, 16)
    clustered_embeddings(tmp_path / "emb", stamp, count=6, clusters=2, dim=16)
    info = build_index(IndexConfig(emb_dir=tmp_path / "emb", out_dir=tmp_path / "idx")).info
    assert info.factory == "Flat" and info.recall_at_10["same_kind"] == 1.0


def test_ivfpq_needs_enough_rows_and_any_dimension_splits(tmp_path, tiny_encoder):
    small = store.ModelStamp(TINY, tiny_encoder.fingerprint, 32)
    clustered_embeddings(tmp_path / "small", small, count=100, clusters=4, dim=32)
    with pytest.raises(InputError, match="needs at least 256 rows") as refused:
        build_index(
            IndexConfig(emb_dir=tmp_path / "small", out_dir=tmp_path / "i1", index_type="ivfpq")
        )
    assert "--type flat" in refused.value.hint
    # Automatic choice under a budget too small for anything: 8-bit codes, never a failed PQ.
    squeezed = build_index(
        IndexConfig(
            emb_dir=tmp_path / "small", out_dir=tmp_path / "i2", flat_threshold=0, max_memory=1
        )
    ).info
    assert squeezed.factory.endswith(",SQ8") and squeezed.rows == 100
    # 100 dimensions: none of faiss's usual sub-vector counts (8, 16, ...) divides them.
    odd = store.ModelStamp(TINY, tiny_encoder.fingerprint, 100)
    clustered_embeddings(tmp_path / "odd", odd, count=1000, clusters=10, dim=100)
    info = build_index(
        IndexConfig(emb_dir=tmp_path / "odd", out_dir=tmp_path / "i3", index_type="ivfpq")
    ).info
    subquantizers = int(info.factory.rsplit("PQ", 1)[1])
    assert 100 % subquantizers == 0 and info.rows == 1000


def test_ivfpq_skips_polysemous_training():
    # index_factory turns it on; it costs minutes and serves only Hamming-filtered search.
    import faiss

    from clipkit.index.build import new_index

    index = new_index(64, "IVF4,PQ8")
    assert faiss.downcast_index(faiss.extract_index_ivf(index)).do_polysemous_training is False
    assert faiss.downcast_index(new_index(64, "Flat")).ntotal == 0  # other types as they come


def test_output_in_the_way_is_refused_before_any_work(corpus, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    with pytest.raises(InputError, match="is a file, not a folder"):
        build_index(IndexConfig(emb_dir=corpus / "emb", out_dir=a_file))
    with pytest.raises(InputError, match="is a file, not a folder"):
        embed(
            EmbedConfig(
                sources=(str(corpus / "data"),),
                out_dir=a_file / "emb",
                model=TINY,
                device="cpu",
                workers=0,
            )
        )
    gallery = runner.invoke(
        cli.app, ["search", "x", "--index", str(corpus / "index"), "--html", str(tmp_path)]
    )
    assert gallery.exit_code == 1 and "is a folder, not a file name" in " ".join(
        gallery.stderr.split()
    )
    assert gallery.stdout == ""  # refused before searching
    assert a_file.read_text() == "mine"


def test_a_model_that_returns_nan_for_the_query_is_refused(tmp_path, tiny_encoder):
    # Texts embed fine with this checkpoint; its image tower has diverged.
    from clipkit.models.checkpoints import write_checkpoint

    state = {name: value.clone() for name, value in tiny_encoder.model.state_dict().items()}
    state["visual.proj"][0, 0] = float("nan")
    checkpoint = tmp_path / "diverged.safetensors"
    write_checkpoint(checkpoint, state, tiny_encoder.checkpoint_meta())
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "dog.txt").write_text("a photo of a dog")
    embed(
        EmbedConfig(
            sources=(str(tmp_path / "texts"),),
            out_dir=tmp_path / "emb",
            model=str(checkpoint),
            device="cpu",
            workers=0,
        )
    )
    query = make_images(tmp_path / "query", 1)[0]
    with pytest.raises(InputError, match="non-finite"):
        search(SearchConfig(images=(query,), embeddings_dir=tmp_path / "emb", device="cpu"))
    found = search(SearchConfig(texts=("a dog",), embeddings_dir=tmp_path / "emb", device="cpu"))
    assert found.results[0].hits[0].text == "a photo of a dog"


def test_exact_topk_breaks_ties_to_the_lower_row():
    from clipkit.index.exact import exact_topk

    keys = np.array([[1, 0], [0, 1], [1, 0], [0.6, 0.8], [1, 0]], dtype=np.float32)
    queries = np.array([[1, 0], [0, 1]], dtype=np.float32)
    scores, rows = exact_topk(queries, keys, 4)
    assert rows.tolist() == [[0, 2, 4, 3], [1, 3, 0, 2]]
    np.testing.assert_allclose(scores, [[1, 1, 1, 0.6], [1, 0.8, 0, 0]])


def test_control_characters_reach_the_html_page_as_their_codes(tmp_path):
    """#24 D13: a NUL (or an escape sequence) in a caption was written raw into the page."""
    from clipkit.report.html import write_search_gallery
    from clipkit.search.run import QueryResult, SearchHit, SearchResult

    hit = SearchHit(
        rank=1,
        score=0.5,
        id="0" * 32,
        uri="captions/a\x07.txt",
        kind="text",
        text="a red\x00 circle \x1b[31m<b>\u0085",
        meta={"note\x0c": "tab\tand\nnewline stay \udcff"},
    )
    result = SearchResult((QueryResult("q\x00", (hit,)),), model="m\x01", source="s")
    page = write_search_gallery(result, tmp_path / "g.html").read_bytes()
    assert not any(byte < 0x20 and byte not in b"\t\n\r" for byte in page)
    text = page.decode("utf-8")  # no lone surrogate either: the page is valid UTF-8
    assert "a red\\x00 circle \\x1b[31m&lt;b&gt;\\x85" in text
    assert "captions/a\\x07.txt" in text and "q\\x00" in text and "m\\x01" in text
    assert "note\\x0c: tab\tand\nnewline stay \\udcff" in text


def test_a_text_query_finds_images_unless_told_otherwise(corpus, tmp_path):
    """#25 item 2: `search "a dog" --embeddings emb` returned caption rows, because it searched
    both kinds. The default is the folder's images (its texts where it has none)."""
    base = ["search", "a photo of a dog", "--embeddings", str(corpus / "emb"), "-k", "20"]
    found = runner.invoke(cli.app, [*base, "-f", "json", "--device", "cpu"])
    assert found.exit_code == 0, found.output
    hits = json.loads(found.stdout)[0]["hits"]
    assert len(hits) == 12 and {hit["kind"] for hit in hits} == {"image"}
    assert "12 image hits for 1 queries" in " ".join(found.stderr.split())
    for kind, expected in (("text", {"text"}), ("all", {"image", "text"})):
        chosen = runner.invoke(cli.app, [*base, "--kind", kind, "-f", "json", "--device", "cpu"])
        assert {hit["kind"] for hit in json.loads(chosen.stdout)[0]["hits"]} == expected
    by_image = search(
        SearchConfig(images=(corpus / "data" / "img0000.jpg",), embeddings_dir=corpus / "emb")
    )
    assert by_image.kind == "image" and {h.kind for h in by_image.results[0].hits} == {"image"}
    texts_only = tmp_path / "texts"
    embed(
        EmbedConfig(
            sources=(str(corpus / "data" / "dog.txt"), str(corpus / "data" / "cat.txt")),
            out_dir=texts_only,
            model=TINY,
            device="cpu",
            workers=0,
        )
    )
    assert search(SearchConfig(texts=("a dog",), embeddings_dir=texts_only)).kind == "text"
    with pytest.raises(UsageError, match="Unknown kind 'images'"):
        search(SearchConfig(texts=("a dog",), embeddings_dir=texts_only, kind="images"))


@pytest.mark.parametrize("scale", [1e-10, 1.0, 1e20, 1e308])
def test_weights_of_any_size_weigh_by_their_ratios(scale):
    """D2 of issue #37: --weights 1e20 overflowed float32 into a zero query that scored every
    hit 0.0 in index order; 1e-10 alone was refused as cancelling out."""
    rng = np.random.default_rng(0)
    parts = rng.standard_normal((2, 16)).astype(np.float32)
    parts /= np.linalg.norm(parts, axis=1, keepdims=True)
    expected = parts[0] - 0.5 * parts[1]  # by definition: the direction of w0·a + w1·b
    expected /= np.linalg.norm(expected)
    combined = combine(parts, [scale, -0.5 * scale])
    assert combined.shape == (1, 16) and np.allclose(combined[0], expected, atol=1e-6)
    alone = combine(parts[:1], [scale])
    assert np.allclose(alone[0], parts[0], atol=1e-6)


def test_huge_weights_search_as_small_ones(corpus):
    config = SearchConfig(texts=("a red square",), index_dir=corpus / "index", k=5)
    plain = search(config).results[0].hits
    huge = search(dataclasses.replace(config, weights=(1e20,))).results[0].hits
    assert [h.id for h in huge] == [h.id for h in plain]
    assert [h.score for h in huge] == pytest.approx([h.score for h in plain], abs=1e-5)
    assert any(h.score != 0.0 for h in huge)  # not the zero query: 0.0 for every hit
