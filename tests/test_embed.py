"""``clipkit embed``: folders and tables to Parquet, bad inputs skipped and listed, resume after
a crash, incremental runs, duplicates, model mismatch, and agreement with the Encoder."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from clipkit import cli
from clipkit.embed import EmbedConfig, embed
from clipkit.errors import InputError
from clipkit.inputs import pipeline
from clipkit.inputs.decode import content_id
from clipkit.inputs.sources import Kind
from tests.helpers import (
    TINY,
    count_spec_parses,
    embed_args,
    embed_config,
    make_images,
    rows,
    torchrun,
)

runner = CliRunner()


def test_folder_of_images_and_texts(tmp_path, tiny_encoder):
    images = make_images(tmp_path / "data" / "nested", 5)
    (tmp_path / "data" / "note.txt").write_text("  a red square  \n")
    (tmp_path / "data" / "ignored.json").write_text("{}")
    result = embed(embed_config([tmp_path / "data"], tmp_path / "out", workers=2))
    assert (result.embedded, result.skipped, result.already_present) == (6, 0, 0)
    assert result.ignored_files == 1
    found = rows(tmp_path / "out")
    assert len(found) == 6
    text_row = next(row for row in found.values() if row["kind"] == "text")
    assert text_row["text"] == "a red square"
    assert text_row["id"] == content_id(b"a red square")
    for path in images:
        row = found[content_id(path.read_bytes())]
        assert row["uri"] == str(path) and row["kind"] == "image" and row["text"] is None


def test_embeddings_equal_the_encoder_and_are_unit_norm(tmp_path, tiny_encoder):
    images = make_images(tmp_path / "imgs", 4, size=(90, 70))
    (tmp_path / "t.txt").write_text("a photo of a dog")
    embed(embed_config([tmp_path / "imgs", tmp_path / "t.txt"], tmp_path / "out"))
    found = rows(tmp_path / "out")
    for path in images:
        pixels = tiny_encoder.preprocess_image(Image.open(path).convert("RGB")).unsqueeze(0)
        expected = tiny_encoder.encode_images(pixels)[0].numpy()
        stored = np.array(found[content_id(path.read_bytes())]["embedding"], dtype=np.float32)
        np.testing.assert_allclose(stored, expected, atol=1e-5)
        assert abs(np.linalg.norm(stored) - 1) < 1e-5
    text = np.array(found[content_id(b"a photo of a dog")]["embedding"], dtype=np.float32)
    np.testing.assert_allclose(text, tiny_encoder.encode_texts(["a photo of a dog"])[0], atol=1e-5)


def test_schema_metadata_and_float16_storage(tmp_path, tiny_encoder):
    make_images(tmp_path / "imgs", 2)
    embed(embed_config([tmp_path / "imgs"], tmp_path / "out", precision="fp16"))
    schema = pq.read_schema(tmp_path / "out" / "part-00000.parquet")
    meta = {k.decode(): v.decode() for k, v in schema.metadata.items()}
    assert meta["clipkit.model"] == TINY
    assert meta["clipkit.fingerprint"] == tiny_encoder.fingerprint
    assert meta["clipkit.dim"] == "128" and "clipkit.version" in meta
    embedding_type = schema.field("embedding").type
    assert embedding_type.list_size == 128 and str(embedding_type.value_type) == "halffloat"


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_tables_with_images_captions_and_pass_through_columns(tmp_path, suffix):
    images = make_images(tmp_path / "imgs", 3)
    records = [
        {"filepath": f"imgs/{p.name}", "caption": f"caption {n}", "label": n, "id": f"x{n}"}
        for n, p in enumerate(images)
    ]
    table = tmp_path / f"pairs{suffix}"
    if suffix == ".parquet":
        import pyarrow as pa

        pq.write_table(pa.Table.from_pylist(records), table)
    elif suffix == ".jsonl":
        table.write_text("\n".join(json.dumps(r) for r in records))
    else:
        sep = "\t" if suffix == ".tsv" else ","
        lines = [sep.join(records[0])] + [sep.join(str(v) for v in r.values()) for r in records]
        table.write_text("\n".join(lines) + "\n")
    result = embed(embed_config([table], tmp_path / "out"))
    assert result.embedded == 6
    found = list(rows(tmp_path / "out").values())
    image_rows = [r for r in found if r["kind"] == "image"]
    assert {r["uri"] for r in image_rows} == {str(p) for p in images}  # relative to the table
    assert sorted(r["label"] for r in found) == ["0", "0", "1", "1", "2", "2"]
    assert {r["source_id"] for r in found} == {"x0", "x1", "x2"}  # renamed: "id" is clipkit's
    text_rows = sorted((r for r in found if r["kind"] == "text"), key=lambda r: r["uri"])
    assert [r["text"] for r in text_rows] == ["caption 0", "caption 1", "caption 2"]


def test_pass_through_values_of_every_arrow_type_read_as_plain_text(tmp_path):
    """Dates were double-quoted ('"2024-05-01 12:30:00"') and bytes a Python repr."""
    import base64
    import datetime
    import decimal

    import pyarrow as pa

    make_images(tmp_path / "imgs", 1)
    when = datetime.datetime(2024, 5, 1, 12, 30)
    columns = {
        "filepath": ["imgs/img0000.jpg"],
        "taken": pa.array([when], pa.timestamp("s")),
        "day": [datetime.date(2024, 5, 1)],
        "raw": [b"\x00\xff"],
        "price": pa.array([decimal.Decimal("1.10")], pa.decimal128(5, 2)),
        "tags": [["a", "b"]],
        "size": [{"w": 3, "h": None}],
        "seen": [[datetime.date(2024, 1, 2)]],
        "score": [0.5],
        "ok": [True],
    }
    pq.write_table(pa.table(columns), tmp_path / "t.parquet")
    embed(embed_config([tmp_path / "t.parquet"], tmp_path / "out"))
    (row,) = rows(tmp_path / "out").values()
    assert {name: row[name] for name in columns if name != "filepath"} == {
        "taken": when.isoformat(),
        "day": "2024-05-01",
        "raw": base64.b64encode(b"\x00\xff").decode(),
        "price": "1.10",
        "tags": json.dumps(["a", "b"]),
        "size": json.dumps({"w": 3, "h": None}),
        "seen": json.dumps(["2024-01-02"]),
        "score": "0.5",
        "ok": "true",
    }


def test_table_column_options_and_missing_column(tmp_path):
    make_images(tmp_path / "imgs", 1)
    table = tmp_path / "t.csv"
    table.write_text("picture,words\nimgs/img0000.jpg,hello\n")
    with pytest.raises(InputError, match="no image or text column"):
        embed(embed_config([table], tmp_path / "out"))
    named = embed_config([table], tmp_path / "out", image_column="picture", text_column="words")
    result = embed(named)
    assert result.embedded == 2
    with pytest.raises(InputError, match="no column 'nope'"):
        embed(embed_config([table], tmp_path / "out2", image_column="nope"))


def test_lines_mode_and_kind_filter(tmp_path):
    (tmp_path / "queries.txt").write_text("a dog\n\na cat\n  a bird  \n")
    result = embed(embed_config([tmp_path / "queries.txt"], tmp_path / "out", lines=True))
    texts = sorted(row["text"] for row in rows(tmp_path / "out").values())
    assert result.embedded == 3 and texts == ["a bird", "a cat", "a dog"]
    make_images(tmp_path / "mixed", 2)
    (tmp_path / "mixed" / "c.txt").write_text("caption")
    only_text = embed(embed_config([tmp_path / "mixed"], tmp_path / "o2", kind=Kind.TEXT))
    assert only_text.embedded == 1


def test_bad_inputs_are_skipped_listed_and_never_abort(tmp_path, monkeypatch):
    data = tmp_path / "data"
    make_images(data, 2)
    (data / "zero.jpg").write_bytes(b"")
    good = (data / "img0000.jpg").read_bytes()
    (data / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (data / "text_named.jpg").write_text("I am not an image")
    (data / "dir.png").mkdir()  # a folder named like an image: walked, not an input
    (data / "broken.png").symlink_to(data / "does-not-exist.png")
    Image.new("L", (200, 200)).save(data / "bomb.png")
    (data / "empty.txt").write_text("   \n")
    (data / "latin1.txt").write_bytes(b"caf\xe9")
    (data / "long.txt").write_text(" ".join(["word"] * 100))
    (data / ".hidden.jpg").write_bytes(b"")  # hidden: not even looked at
    locked = data / "locked.png"
    Image.new("RGB", (9, 9)).save(locked)
    real_read = pipeline.read_bytes

    def deny(path):  # the tests run as root, where chmod 000 cannot stop a read
        if path == str(locked):
            raise pipeline.DecodeError("read", "permission denied")
        return real_read(path)

    monkeypatch.setattr(pipeline, "read_bytes", deny)
    result = embed(embed_config([data], tmp_path / "out", max_pixels=20_000))
    reasons = {Path(uri).name: (stage, error) for uri, stage, error in result.failures}
    assert set(reasons) == {
        "zero.jpg",
        "truncated.jpg",
        "text_named.jpg",
        "broken.png",
        "bomb.png",
        "empty.txt",
        "locked.png",
    }
    assert reasons["zero.jpg"] == ("read", "empty file")
    assert reasons["text_named.jpg"][1] == "not a recognised image format"
    assert reasons["broken.png"] == ("read", "missing (or a broken symlink)")
    assert "exceeds" in reasons["bomb.png"][1]
    assert reasons["locked.png"] == ("read", "permission denied")
    assert result.embedded == 4  # two images, the Latin-1 text and the long text
    assert (result.replaced_texts, result.truncated_texts) == (1, 1)
    failures = pq.read_table(tmp_path / "out" / "_failures.parquet").to_pylist()
    assert {Path(f["uri"]).name for f in failures} == set(reasons)
    assert all(f["stage"] and f["error"] for f in failures)


@pytest.mark.parametrize("workers", [0, 1])
def test_named_pipes_are_listed_not_read(tmp_path, workers):
    """Opening a named pipe for reading waits for a writer: one named like an image used to hang
    a decode worker, the run and its exit. A watchdog plays the writer, so that a regression
    fails (the pipe then reads as empty, "empty file") instead of hanging the suite."""
    data = tmp_path / "data"
    make_images(data, 2)
    pipes = [data / name for name in ("pipe.jpg", "pipe.txt", "pipe.tar")]
    for pipe in pipes:
        os.mkfifo(pipe)
    done, blocked = threading.Event(), []

    def writer() -> None:  # opens (and closes) a pipe only while something waits to read it
        while not done.wait(0.2):
            for pipe in pipes:
                try:
                    os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
                    blocked.append(pipe.name)
                except OSError:  # ENXIO: no reader waiting
                    pass

    watchdog = threading.Thread(target=writer, daemon=True)
    watchdog.start()
    try:
        result = embed(embed_config([data], tmp_path / "out", workers=workers))
    finally:
        done.set()
        watchdog.join()
    reasons = {Path(uri).name: (stage, error) for uri, stage, error in result.failures}
    not_regular = ("read", "not a regular file (a named pipe, socket or device)")
    expected = {"pipe.jpg": not_regular, "pipe.txt": not_regular, "pipe.tar": not_regular}
    # (The check opens a pipe non-blocking for an instant, so the watchdog may slip in then:
    # what it unblocked is only named here, the reasons decide.)
    assert reasons == expected, f"waited for a writer: {blocked}"
    assert result.embedded == 2


def test_directory_named_like_an_image_in_a_table(tmp_path):
    (tmp_path / "x.png").mkdir()
    (tmp_path / "t.csv").write_text("filepath\nx.png\n")
    result = embed(embed_config([tmp_path / "t.csv"], tmp_path / "out"))
    assert result.failures == ((str(tmp_path / "x.png"), "read", "is a directory, not a file"),)


def test_hidden_files_only_on_request(tmp_path):
    make_images(tmp_path / "d" / ".cache", 1)
    make_images(tmp_path / "d", 1, start=5)
    assert embed(embed_config([tmp_path / "d"], tmp_path / "o1")).embedded == 1
    assert embed(embed_config([tmp_path / "d"], tmp_path / "o2", include_hidden=True)).embedded == 2


def test_missing_or_empty_sources_are_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        embed(embed_config([tmp_path / "nope"], tmp_path / "out"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.md").write_text("x")
    with pytest.raises(InputError, match="holds nothing to embed"):
        embed(embed_config([tmp_path / "empty"], tmp_path / "out"))


def test_identical_files_share_one_row_and_are_listed_as_aliases(tmp_path):
    make_images(tmp_path / "d", 2)
    copy = tmp_path / "d" / "copy_of_img0000.jpg"
    copy.write_bytes((tmp_path / "d" / "img0000.jpg").read_bytes())
    (tmp_path / "d" / "a.txt").write_text("same words")
    (tmp_path / "d" / "b.txt").write_text("same words\n")
    result = embed(embed_config([tmp_path / "d"], tmp_path / "out"))
    assert result.embedded == 3 and result.aliases == 2
    aliases = pq.read_table(tmp_path / "out" / "_aliases.parquet").to_pylist()
    assert {(a["id"], Path(a["uri"]).name) for a in aliases} == {
        (content_id(copy.read_bytes()), "img0000.jpg"),  # sorted order: copy_of_ comes first
        (content_id(b"same words"), "b.txt"),
    }
    again = embed(embed_config([tmp_path / "d"], tmp_path / "out"))
    assert (again.embedded, again.already_present, again.aliases) == (0, 5, 0)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_worker_decodes_each_content_once_however_many_copies(tmp_path, monkeypatch, workers):
    originals = make_images(tmp_path / "d", 3)
    for n in range(5):  # copies on both sides of their original in uri order
        for original in originals[:2]:
            (tmp_path / "d" / f"{'a' if n % 2 else 'z'}{n}_{original.name}").write_bytes(
                original.read_bytes()
            )
    log = tmp_path / "decoded.log"
    decode = pipeline.decode_image

    def counted(data, **options):
        with open(log, "a") as handle:  # forked workers append too
            handle.write(content_id(data) + "\n")
        return decode(data, **options)

    monkeypatch.setattr(pipeline, "decode_image", counted)
    result = embed(embed_config([tmp_path / "d"], tmp_path / "out", workers=workers, batch_size=4))
    assert (result.embedded, result.aliases, result.skipped) == (3, 10, 0)
    decoded = log.read_text().split()
    # Each worker decodes a content at most once: once in all without workers.
    assert len(set(decoded)) == 3 and len(decoded) <= 3 * max(1, workers)
    assert sorted(row["uri"] for row in rows(tmp_path / "out").values()) == sorted(
        min(str(p) for p in (tmp_path / "d").iterdir() if p.read_bytes() == o.read_bytes())
        for o in originals
    )  # the row keeps the first copy in uri order, as when every copy was decoded
    assert len(pq.read_table(tmp_path / "out" / "_aliases.parquet")) == 10


def test_adding_files_embeds_only_the_new_ones(tmp_path):
    make_images(tmp_path / "d", 3)
    first = embed(embed_config([tmp_path / "d"], tmp_path / "out", shard_rows=2))
    make_images(tmp_path / "d", 2, start=3)
    second = embed(embed_config([tmp_path / "d"], tmp_path / "out", shard_rows=2))
    assert (first.embedded, second.embedded, second.already_present) == (3, 2, 3)
    found = rows(tmp_path / "out")
    assert len(found) == 5
    assert len(list((tmp_path / "out").glob("part-*.parquet"))) == 3  # 2+1, then 2


def test_a_different_model_is_refused(tmp_path, tiny_encoder):
    from clipkit.models.checkpoints import write_checkpoint

    make_images(tmp_path / "d", 1)
    embed(embed_config([tmp_path / "d"], tmp_path / "out"))
    model = tiny_encoder.model
    state = {k: v + 0.01 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    other = write_checkpoint(tmp_path / "other.safetensors", state, tiny_encoder.checkpoint_meta())
    with pytest.raises(InputError, match="holds embeddings from another model") as info:
        embed(
            EmbedConfig(
                sources=(str(tmp_path / "d"),),
                out_dir=tmp_path / "out",
                model=str(other),
                device="cpu",
                workers=0,
            )
        )
    assert TINY in info.value.message and str(other) in info.value.message


# clipkit embed that is killed (SIGKILL, as by the out-of-memory killer) at the moment it
# would publish shard number argv[-1]: that shard's temporary is written whole, not renamed.
KILLED_EMBED = """
import os, signal, sys
real_replace, doomed = os.replace, f"part-{int(sys.argv[-1]):05d}.parquet"

def replace(source, target, *args, **kwargs):
    if os.fspath(target).endswith(doomed):
        os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(source, target, *args, **kwargs)

os.replace = replace
sys.argv = ["clipkit", *sys.argv[1:-1]]
from clipkit.cli import main
main()
"""


@pytest.mark.e2e
def test_resume_after_kill_gives_the_same_rows(tmp_path):
    """Killed as it publishes its fourth shard (of 50), a re-run sweeps the temporary, keeps the
    three shards and embeds the rest: the rows equal an uninterrupted run's."""
    data = tmp_path / "data"
    make_images(data, 400, size=(24, 24))
    options = ("--batch-size", "4", "--shard-rows", "8")
    crashed, clean = tmp_path / "crashed", tmp_path / "clean"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_EMBED, *embed_args(data, crashed, *options), "3"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert len(list(crashed.glob("part-*.parquet"))) == 3
    assert len(list(crashed.glob(".part-00003.parquet.*.tmp"))) == 1
    resumed = subprocess.run(
        [sys.executable, "-m", "clipkit", *embed_args(data, crashed, *options)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "already present 24" in " ".join(resumed.stderr.split())
    embed(embed_config([data], clean, batch_size=4, shard_rows=8))
    after_crash, uninterrupted = rows(crashed), rows(clean)
    assert len(after_crash) == len(uninterrupted) == 400
    assert after_crash.keys() == uninterrupted.keys()
    for item_id, row in uninterrupted.items():
        assert after_crash[item_id]["uri"] == row["uri"]
        np.testing.assert_allclose(after_crash[item_id]["embedding"], row["embedding"], atol=1e-5)
    assert not list(crashed.glob(".*.tmp"))


def test_cli_embed_summary_strict_and_errors(tmp_path):
    make_images(tmp_path / "d", 2)
    (tmp_path / "d" / "bad.jpg").write_text("nope")
    args = embed_args(str(tmp_path / "d"), str(tmp_path / "out"))
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    assert "Embedded 2, skipped 1, already present 0" in result.stderr
    assert "bad.jpg" in result.stderr
    strict = runner.invoke(cli.app, [*args, "--strict"])
    assert strict.exit_code == 1
    assert "Embedded 0, skipped 1, already present 2" in strict.stderr
    missing = runner.invoke(cli.app, ["embed", str(tmp_path / "nope"), "-o", "x", "-m", TINY])
    assert missing.exit_code == 1 and "Error: Source" in missing.stderr


def test_encoder_batch_output_is_float32_torch(tiny_encoder):
    # The pipeline relies on encode_images accepting a stacked CPU batch.
    assert tiny_encoder.encode_images(torch.zeros(2, 3, 64, 64)).dtype == torch.float32


@pytest.mark.e2e
def test_two_gloo_processes_equal_a_single_process(tmp_path):
    data = tmp_path / "data"
    make_images(data, 23, size=(20, 20))
    (data / "dup_of_7.png").write_bytes((data / "img0007.png").read_bytes())
    (data / "broken.jpg").write_text("not an image")
    for n in range(5):
        (data / f"t{n}.txt").write_text(f"caption number {n % 4}")  # t4 repeats t0
    single, multi = tmp_path / "single", tmp_path / "multi"
    sizes = ("--batch-size", "4", "--shard-rows", "5")
    subprocess.run(
        [sys.executable, "-m", "clipkit", *embed_args(data, single, *sizes, workers=1)],
        check=True,
        capture_output=True,
    )
    launcher = torchrun("-m", "clipkit")
    out = subprocess.run(
        [*launcher, *embed_args(data, multi, *sizes, workers=1)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stderr.count("Embedded 27, skipped 1") == 1  # rank 0 alone reports
    one, two = rows(single), rows(multi)
    assert one.keys() == two.keys() and len(one) == 27
    for item_id, row in one.items():
        assert two[item_id]["uri"] == row["uri"] and two[item_id]["kind"] == row["kind"]
        np.testing.assert_allclose(two[item_id]["embedding"], row["embedding"], atol=1e-5)
    for side_table in ("_failures.parquet", "_aliases.parquet"):
        a = sorted(map(str, pq.read_table(single / side_table).to_pylist()))
        b = sorted(map(str, pq.read_table(multi / side_table).to_pylist()))
        assert a == b, side_table
    names = sorted(p.name for p in multi.glob("part-*.parquet"))
    assert len(names) == len(set(names)) >= 2


def test_ctrl_c_keeps_finished_embeddings(tmp_path):
    make_images(tmp_path / "d", 12)
    cfg = embed_config([tmp_path / "d"], tmp_path / "out", batch_size=4, shard_rows=1000)

    def interrupt_after_two_batches(report):
        if report.stage == "images" and report.done >= 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        embed(cfg, progress=interrupt_after_two_batches)
    assert len(rows(tmp_path / "out")) == 8  # flushed although below --shard-rows
    resumed = embed(cfg)
    assert (resumed.embedded, resumed.already_present) == (4, 8)


@pytest.mark.parametrize("batch_size", [64, 1])  # the copy in the same batch, or a later one
def test_non_finite_embeddings_are_failures_not_rows(tmp_path, tiny_encoder, batch_size):
    # A diverged checkpoint: NaN in the image tower's projection, the text tower intact.
    from clipkit.models.checkpoints import write_checkpoint

    state = {name: value.clone() for name, value in tiny_encoder.model.state_dict().items()}
    state["visual.proj"][0, 0] = float("nan")
    checkpoint = tmp_path / "diverged.safetensors"
    write_checkpoint(checkpoint, state, tiny_encoder.checkpoint_meta())
    images = make_images(tmp_path / "data", 3)
    # A copy in the same batch would be an alias of a row that is never written.
    images.append(tmp_path / "data" / "copy.jpg")
    images[-1].write_bytes(images[0].read_bytes())
    (tmp_path / "data" / "caption.txt").write_text("a photo of a dog")
    out = tmp_path / "out"
    result = embed(
        EmbedConfig(
            sources=(str(tmp_path / "data"),),
            out_dir=out,
            model=str(checkpoint),
            device="cpu",
            workers=0,
            batch_size=batch_size,
        )
    )
    assert (result.embedded, result.skipped, result.aliases) == (1, 4, 0)
    assert sorted(uri for uri, _, _ in result.failures) == sorted(map(str, images))
    assert {stage for _, stage, _ in result.failures} == {"encode"}
    assert [row["kind"] for row in rows(out).values()] == ["text"]
    assert not (out / "_aliases.parquet").exists()
    failures = pq.read_table(out / "_failures.parquet").to_pylist()
    assert all("non-finite" in row["error"] for row in failures) and len(failures) == 4
    strict = runner.invoke(
        cli.app,
        [
            "embed",
            str(tmp_path / "data"),
            "-o",
            str(out),
            "-m",
            str(checkpoint),
            "--device",
            "cpu",
            "--strict",
        ],
    )
    assert strict.exit_code == 1 and "non-finite" in strict.stderr


def _worker_settings(_image) -> torch.Tensor:
    ignores_sigterm = signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    return torch.tensor([os.nice(0), torch.get_num_threads(), int(ignores_sigterm)])


@pytest.mark.parametrize("runtime", ["torch", "onnx"])  # DataLoader's workers, and ours
def test_decode_workers_run_single_threaded_at_the_lowest_priority(tmp_path, runtime):
    # Workers that compete at full priority stall the model's lock-step threads (see pipeline).
    from clipkit.inputs.sources import Item

    own_niceness = os.nice(0)
    paths = make_images(tmp_path, 4)
    items = [Item(uri=str(p), kind="image", path=str(p)) for p in paths]
    dataset = pipeline.ImageDataset(
        items, known_ids=frozenset(), preprocess=_worker_settings, min_side=8, max_pixels=10**6
    )
    batches = list(pipeline.image_batches(dataset, 2, workers=2, device="cpu", runtime=runtime))
    settings = torch.cat([batch.pixels for batch in batches])
    # ... and a scheduler's SIGTERM to the process group is left to the main process.
    expected = [min(19, own_niceness + pipeline.WORKER_NICENESS), 1, 1]
    assert settings.tolist() == [expected] * 4
    assert os.nice(0) == own_niceness  # the process that runs the model keeps its priority


def test_a_full_disk_stops_embed_with_a_clear_error_and_the_rerun_resumes(tmp_path, monkeypatch):
    import errno

    from clipkit import store
    from clipkit.errors import ClipkitError

    make_images(tmp_path / "d", 6)
    cfg = embed_config([tmp_path / "d"], tmp_path / "out", batch_size=2, shard_rows=2)
    real_write, written = store.pq.write_table, []

    def disk_fills_after_one_shard(table, where, **options):
        if written:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(where)
        real_write(table, where, **options)

    monkeypatch.setattr(store.pq, "write_table", disk_fills_after_one_shard)
    with pytest.raises(ClipkitError, match="No space left on device") as stopped:
        embed(cfg)
    assert "run the command again" in stopped.value.hint
    assert len(rows(tmp_path / "out")) == 2  # the shard written before the disk filled
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    resumed = embed(cfg)
    assert (resumed.embedded, resumed.already_present) == (4, 2)
    assert len(rows(tmp_path / "out")) == 6


def test_a_checkpoint_spec_is_parsed_once_per_embed(tmp_path, tiny_encoder, monkeypatch):
    """The spec is parsed by embed and handed down as a ModelSpec: the export lookup, the
    checkpoint's file list and the loader each parsed it again before."""
    from clipkit.embed import run as embed_run
    from clipkit.models.checkpoints import write_checkpoint

    checkpoint = tmp_path / "tuned.safetensors"
    write_checkpoint(checkpoint, tiny_encoder.model.state_dict(), tiny_encoder.checkpoint_meta())
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "caption.txt").write_text("a photo of a dog")
    parsed = count_spec_parses(monkeypatch, embed_run)
    config = embed_config([tmp_path / "data"], tmp_path / "out", runtime="auto")
    result = embed(dataclasses.replace(config, model=str(checkpoint)))
    assert result.embedded == 1 and parsed == [str(checkpoint)]
