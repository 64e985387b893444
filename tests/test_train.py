"""``clipkit train`` end to end on generated shapes with the tiny architecture: it learns,
its checkpoints load by path, resume is bit-for-bit, lock flags freeze what they say, WiSE-FT
interpolates, and bad data fails before training (or is skipped and listed)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from clipkit.errors import InputError
from clipkit.inputs.synthetic import write_captioned_shapes
from clipkit.models import load_model
from clipkit.train import train
from clipkit.train.state import STATE_FILE, load_state
from tests.helpers import TINY, make_images, train_config


def _metrics(run_dir):
    lines = Path(run_dir, "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_loss_falls_and_validation_recall_rises_above_chance(finished_run):
    _, result = finished_run
    steps = [r for r in _metrics(result.run_dir) if r["kind"] == "step"]
    assert [r["step"] for r in steps] == list(range(1, 21))  # 180 train pairs // 32 = 5 x 4
    assert sum(r["loss"] for r in steps[-3:]) < sum(r["loss"] for r in steps[:3]) - 1.0
    first, last = result.evaluations[0], result.evaluations[-1]
    chance_r5 = 5 / result.val_pairs
    assert last.loss < first.loss
    assert last.image_to_text_r5 > 1.5 * chance_r5 and last.text_to_image_r5 > 1.5 * chance_r5
    assert last.zeroshot_top1 > 0.4  # 4 colour classes: chance is 0.25


def test_run_folder_holds_checkpoints_metrics_config_and_plot(finished_run):
    config, result = finished_run
    run = Path(result.run_dir)
    for name in (
        "best.safetensors",
        "last.safetensors",
        "wise-ft-0.5.safetensors",
        "state.pt",
        "config.json",
        "metrics.jsonl",
        "_failures.parquet",
        "training.png",
    ):
        assert (run / name).is_file(), name
    assert (run / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((run / "config.json").read_text())
    assert saved["batch_size"] == 32 and saved["resolved"]["total_steps"] == 20
    assert saved["resolved"]["lr"] == 5e-4  # the from-scratch default
    evals = [r for r in _metrics(run) if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [5, 10, 15, 20]
    step = next(r for r in _metrics(run) if r["kind"] == "step")
    assert {"loss_image_to_text", "loss_text_to_image", "temperature", "lr"} <= step.keys()


def test_checkpoint_loads_by_path_with_identical_embeddings(finished_run, shapes):
    _, result = finished_run
    by_folder = load_model(result.run_dir, device="cpu")  # the best checkpoint
    by_file = load_model(result.best_checkpoint, device="cpu")
    manual = load_model(TINY, device="cpu")
    manual.model.load_state_dict(load_file(result.best_checkpoint))
    files = sorted((shapes / "data").glob("*.png"))[:4]
    pixels = torch.stack([by_folder.preprocess_image(Image.open(f).convert("RGB")) for f in files])
    texts = ["a small red square on a grey background", "a large blue circle"]
    expected = manual.encode_images(pixels), manual.encode_texts(texts)
    for encoder in (by_folder, by_file):
        assert torch.equal(encoder.encode_images(pixels), expected[0])
        assert torch.equal(encoder.encode_texts(texts), expected[1])
    # same weights, same identity; the random-init model it started from is another model
    assert by_folder.fingerprint == by_file.fingerprint != manual.fingerprint


def test_wise_ft_interpolates_initial_and_tuned_weights(finished_run):
    _, result = finished_run
    merged = load_file(result.wise_ft_checkpoint)
    tuned = load_state(Path(result.run_dir) / STATE_FILE).model
    initial = load_model(TINY, device="cpu").model.state_dict()
    name = "text_projection"
    torch.testing.assert_close(merged[name], 0.5 * initial[name] + 0.5 * tuned[name])
    assert not torch.equal(tuned[name], initial[name])


def test_rerunning_a_finished_run_says_so(finished_run):
    config, first = finished_run
    again = train(dataclasses.replace(config, resume=True))
    assert again.already_finished and again.steps_done == 20
    # the evaluations come back from metrics.jsonl, one per epoch, as they were
    assert len(first.evaluations) == 4
    assert again.evaluations == first.evaluations


SIX_STEPS = {"steps": 6, "val_split": 0.0, "seed": 3}


@pytest.fixture(scope="module")
def six_steps(shapes, tmp_path_factory):
    """The uninterrupted run that interrupted-and-resumed runs must equal bit for bit."""
    out = tmp_path_factory.mktemp("six-steps") / "whole"
    train(train_config(shapes, out, **SIX_STEPS))
    return out


def test_resume_continues_bit_for_bit(shapes, tmp_path, six_steps):
    options = SIX_STEPS

    def stop_at_step_3(report):
        if report.stage == "train" and report.done == 3:
            raise KeyboardInterrupt

    first = train(train_config(shapes, tmp_path / "split", **options), progress=stop_at_step_3)
    assert first.interrupted and first.steps_done == 3
    rest = train(train_config(shapes, tmp_path / "split", resume=True, **options))
    assert rest.steps_done == 6 and not rest.interrupted
    assert [r["loss"] for r in _metrics(tmp_path / "split")] == [
        r["loss"] for r in _metrics(six_steps)
    ]
    whole_weights = load_file(six_steps / "last.safetensors")
    split_weights = load_file(tmp_path / "split" / "last.safetensors")
    assert all(torch.equal(whole_weights[n], split_weights[n]) for n in whole_weights)


@pytest.mark.parametrize("signals", [1, 2])
def test_sigterm_right_after_the_optimizer_step_saves_a_consistent_step(
    shapes, tmp_path, monkeypatch, signals, six_steps
):
    """D1 of issue #24: SIGTERM raised at once (the CLI's handler), so it could land between
    the optimizer's update and the step counter, and the checkpoint paired step N with step
    N+1's weights. Now the loop takes it as Ctrl-C, and a second signal waits for the update
    to be counted: the resumed run still ends bit for bit as the uninterrupted one."""
    from clipkit.train.loop import StepLoop

    options = SIX_STEPS

    update = StepLoop._update
    calls = []

    def update_then_signal(self):
        update(self)
        calls.append(1)
        if len(calls) == 3:  # the weights of step 3 are in place, the counter says 2
            for _ in range(signals):
                os.kill(os.getpid(), signal.SIGTERM)

    def raise_at_once(signum, frame):  # what `clipkit` installs (cli.main)
        raise KeyboardInterrupt

    monkeypatch.setattr(StepLoop, "_update", update_then_signal)
    previous = signal.signal(signal.SIGTERM, raise_at_once)
    try:
        first = train(train_config(shapes, tmp_path / "split", **options))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert first.interrupted and first.steps_done == 3
    monkeypatch.setattr(StepLoop, "_update", update)
    rest = train(train_config(shapes, tmp_path / "split", resume=True, **options))
    assert rest.steps_done == 6 and not rest.interrupted
    whole_weights = load_file(six_steps / "last.safetensors")
    split_weights = load_file(tmp_path / "split" / "last.safetensors")
    assert all(torch.equal(whole_weights[n], split_weights[n]) for n in whole_weights)


def test_resume_refuses_changed_options_and_new_run_refuses_used_folder(shapes, tmp_path):
    train(train_config(shapes, tmp_path / "run", steps=1, val_split=0.0))
    with pytest.raises(InputError, match="these differ: batch_size"):
        train(
            train_config(
                shapes, tmp_path / "run", steps=1, val_split=0.0, batch_size=8, resume=True
            )
        )
    with pytest.raises(InputError, match="already holds a training run"):
        train(train_config(shapes, tmp_path / "run", steps=1, val_split=0.0))


@pytest.mark.parametrize("lock", ["image", "text"])
def test_lock_flags_freeze_their_tower(shapes, tmp_path, lock):
    result = train(
        train_config(shapes, tmp_path / lock, steps=2, val_split=0.0, **{f"lock_{lock}": True})
    )
    tuned = load_file(result.last_checkpoint)
    initial = load_model(TINY, device="cpu").model.state_dict()
    image_names = [n for n in initial if n.startswith("visual.")]
    text_names = [n for n in initial if not n.startswith("visual.") and "logit" not in n]
    frozen, trained = (image_names, text_names) if lock == "image" else (text_names, image_names)
    assert all(torch.equal(tuned[n], initial[n]) for n in frozen)
    assert sum(not torch.equal(tuned[n], initial[n]) for n in trained) > len(trained) // 2


def test_temperature_options_reach_the_model(shapes, tmp_path):
    fixed = train(
        train_config(
            shapes,
            tmp_path / "fixed",
            steps=2,
            val_split=0.0,
            init_temperature=0.05,
            learn_temperature=False,
        )
    )
    assert float(load_file(fixed.last_checkpoint)["logit_scale"]) == pytest.approx(math.log(20))
    assert [r["temperature"] for r in _metrics(fixed.run_dir)] == pytest.approx([0.05, 0.05])
    learned = train(
        train_config(
            shapes, tmp_path / "learned", steps=2, val_split=0.0, init_temperature=0.05, lr=1e-2
        )
    )
    assert float(load_file(learned.last_checkpoint)["logit_scale"]) != pytest.approx(math.log(20))


def test_lambda_one_trains_on_the_image_to_text_direction_only(shapes, tmp_path):
    result = train(train_config(shapes, tmp_path / "i2t", steps=2, val_split=0.0, weight=1.0))
    for record in _metrics(result.run_dir):
        assert record["loss"] == pytest.approx(record["loss_image_to_text"], rel=1e-5)
        assert record["loss"] != pytest.approx(record["loss_text_to_image"], rel=1e-3)


def test_unreadable_images_and_empty_captions_are_skipped_and_listed(shapes, tmp_path):
    data = tmp_path / "data"
    write_captioned_shapes(data, 20)
    (data / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (data / "broken.txt").write_text("a caption for a broken image")
    (data / "silent.png").write_bytes((data / "shape00000.png").read_bytes())
    (data / "silent.txt").write_text("   \n")
    result = train(train_config(shapes, tmp_path / "run", data=str(data), steps=1, val_split=0.0))
    reasons = {Path(uri).name: stage for uri, stage, _ in result.skipped}
    assert reasons == {"broken.jpg": "decode", "silent.png": "caption"}
    import pyarrow.parquet as pq

    listed = pq.read_table(tmp_path / "run" / "_failures.parquet").column("uri").to_pylist()
    assert sorted(Path(u).name for u in listed) == ["broken.jpg", "silent.png"]


def test_bad_datasets_fail_before_training(shapes, tmp_path):
    tiny = tmp_path / "one"
    write_captioned_shapes(tiny, 1)
    with pytest.raises(InputError, match="1 usable training pair"):
        train(train_config(shapes, tmp_path / "a", data=str(tiny), steps=1))
    with pytest.raises(InputError, match="--batch-size 500 is larger than the 180"):
        train(train_config(shapes, tmp_path / "b", steps=1, batch_size=500))
    table = tmp_path / "pairs.csv"
    table.write_text("picture,description\nx.png,a caption\n")
    with pytest.raises(InputError, match="has no image column"):
        train(train_config(shapes, tmp_path / "c", data=str(table), steps=1))
    for name in ("a", "b", "c"):
        assert not (tmp_path / name / STATE_FILE).exists()


def test_trains_on_webdataset_tar_shards(shapes, tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    for number in range(2):
        with tarfile.open(shards / f"shard-{number:04d}.tar", "w") as archive:
            for image in sorted((shapes / "data").glob("*.png"))[number * 10 : number * 10 + 10]:
                archive.add(image, arcname=f"{image.stem}.png")
                archive.add(image.with_suffix(".txt"), arcname=f"{image.stem}.txt")
            archive.add(make_images(tmp_path / "lone", 1)[0], arcname="lonely.jpg")
    result = train(
        train_config(
            shapes, tmp_path / "run", data=str(shards), steps=2, batch_size=8, val_split=0.0
        )
    )
    assert result.train_pairs == 20 and result.steps_done == 2
    assert [reason for _, _, reason in result.skipped] == ["sample has no txt member"] * 2
    assert result.skipped[0][0].endswith("shard-0000.tar#lonely.jpg")


def test_a_diverging_run_stops_at_the_first_non_finite_loss_and_keeps_the_weights(
    shapes, tmp_path, monkeypatch
):
    # The third step's loss comes out NaN (after a real forward and backward); the weights as
    # they were before it must be what is saved, untouched by the optimizer.
    from clipkit.errors import DivergedError
    from clipkit.train import loop as loop_module

    real_step, calls, before = loop_module.full_batch_step, [], {}

    def step_that_diverges(model, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            before.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        losses = real_step(model, *args, **kwargs)
        return dataclasses.replace(losses, loss=math.nan) if len(calls) == 3 else losses

    monkeypatch.setattr(loop_module, "full_batch_step", step_that_diverges)
    with pytest.raises(DivergedError) as stopped:
        train(train_config(shapes, tmp_path / "run", steps=10, val_split=0.0))
    assert len(calls) == 3
    assert "loss became nan at step 3" in str(stopped.value) and "--lr" in stopped.value.hint
    assert str(tmp_path / "run" / "last.safetensors") in stopped.value.hint
    saved = load_file(tmp_path / "run" / "last.safetensors")
    assert all(torch.equal(saved[name], before[name]) for name in saved)
    assert load_state(tmp_path / "run" / STATE_FILE).step == 2
    steps = [r["step"] for r in _metrics(tmp_path / "run") if r["kind"] == "step"]
    assert steps == [1, 2]


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"lr": math.nan}, "--lr must be in"),
        ({"grad_clip": math.nan}, "--grad-clip must be"),
        ({"weight_decay": -0.1}, "--weight-decay must be"),
    ],
)
def test_non_numbers_in_optimiser_options_are_refused_before_training(
    shapes, tmp_path, option, message
):
    # The CLI's own range checks stop these too; the service must not rely on them.
    with pytest.raises(InputError, match=message):
        train(train_config(shapes, tmp_path / "run", **option))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("name", "damage", "expected"),
    [
        (
            "config.json",
            b'{"batch_size": 8, ',
            "config.json, the options of the run to resume, is damaged",
        ),
        (
            "config.json",
            b"\xff\xfe not utf-8",
            "config.json, the options of the run to resume, is damaged",
        ),
        ("config.json", b"[1, 2]", "is damaged \\(not a JSON object\\)"),
        (
            "metrics.jsonl",
            b"\xff\xfe not utf-8",
            "Line 1 of .*metrics.jsonl, the run's log, is damaged",
        ),
    ],
)
def test_a_damaged_config_or_log_in_a_run_folder_is_named(shapes, tmp_path, name, damage, expected):
    """#24 D8: "Unexpected JSONDecodeError … please report it", without the file's name."""
    options = {"steps": 2, "val_split": 0.0}

    def stop_at_step_1(report):
        if report.stage == "train" and report.done == 1:
            raise KeyboardInterrupt

    train(train_config(shapes, tmp_path / "run", **options), progress=stop_at_step_1)
    path = tmp_path / "run" / name
    if name == "metrics.jsonl":  # damage in the middle, not a torn last line
        path.write_bytes(damage + b"\n" + path.read_bytes())
    else:
        path.write_bytes(damage)
    with pytest.raises(InputError, match=expected) as refused:
        train(train_config(shapes, tmp_path / "run", resume=True, **options))
    assert str(tmp_path / "run") in refused.value.message


def test_a_torn_last_line_of_the_log_is_dropped_on_resume(shapes, tmp_path):
    options = {"steps": 2, "val_split": 0.0}

    def stop_at_step_1(report):
        if report.stage == "train" and report.done == 1:
            raise KeyboardInterrupt

    train(train_config(shapes, tmp_path / "run", **options), progress=stop_at_step_1)
    log = tmp_path / "run" / "metrics.jsonl"
    log.write_bytes(log.read_bytes() + b'{"kind": "step", "st')  # killed mid-write
    result = train(train_config(shapes, tmp_path / "run", resume=True, **options))
    assert result.steps_done == 2
    assert [r["step"] for r in _metrics(tmp_path / "run") if r["kind"] == "step"] == [1, 2]


@pytest.mark.e2e
def test_what_a_killed_run_was_saving_is_deleted_by_the_next_run(shapes, tmp_path):
    """#24 D9: `kill -9` while the resume state is written left a 32 MiB `.state.pt.*.tmp`
    (and a `.best.safetensors.*.tmp`) that stayed after a successful resume."""
    import subprocess
    import sys

    config = train_config(shapes, tmp_path / "run", steps=4, val_split=0.0, save_every=2)
    code = f"""
import os, signal, torch
from clipkit.train import TrainConfig, train
import clipkit.train.state as state
def save_then_die(payload, path):
    with open(path, "wb") as handle:
        handle.write(b"half a state")  # the kill lands mid-write
    os.kill(os.getpid(), signal.SIGKILL)
state.torch.save = save_then_die
train(TrainConfig(**{dataclasses.asdict(config)!r}))
"""
    killed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run = tmp_path / "run"
    left = [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    assert len(left) == 1 and left[0].startswith(".state.pt.")
    (run / "notes.tmp").write_text("the user's")  # not a staged file: kept
    result = train(train_config(shapes, run, steps=4, val_split=0.0, save_every=2, resume=True))
    assert result.steps_done == 4 and not result.interrupted
    assert sorted(p.name for p in run.iterdir() if p.name.endswith(".tmp")) == ["notes.tmp"]


def test_embed_and_index_delete_what_killed_runs_were_writing(tmp_path):
    from clipkit.embed import embed
    from clipkit.index import IndexConfig, build_index
    from tests.helpers import embed_config

    make_images(tmp_path / "data", 3)
    embed(embed_config([tmp_path / "data"], tmp_path / "emb"))
    build_index(IndexConfig(emb_dir=tmp_path / "emb", out_dir=tmp_path / "idx"))
    stale = [
        tmp_path / "emb" / ".part-00001.parquet.k3j4h5g6.tmp",
        tmp_path / "idx" / ".index.faiss.a1b2c3d4.tmp",
        tmp_path / "idx" / ".rows.parquet.zz_9yy8x.tmp",
    ]
    for path in stale:
        path.write_bytes(b"left by a kill")
    embed(embed_config([tmp_path / "data"], tmp_path / "emb"))
    build_index(IndexConfig(emb_dir=tmp_path / "emb", out_dir=tmp_path / "idx", update=True))
    assert not any(path.exists() for path in stale)
