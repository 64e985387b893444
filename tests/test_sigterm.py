"""SIGTERM, as a scheduler (Slurm, Kubernetes) or ``timeout`` sends it to the whole process
group, ends ``clipkit embed`` and ``clipkit train`` like Ctrl-C: embed writes the embeddings it
held in memory (up to ``--shard-rows`` of them used to be lost), train saves its last step, and
both exit 130. Decode workers ignore it and leave the stop to the main process, which kills a
worker stuck in a read once it is done, so that its exit never waits for one: DataLoader's
workers (torch runtime) and the torch-free ones (ONNX runtime) alike."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clipkit.train.state import STATE_FILE, load_state
from tests.helpers import TINY, embed_args, make_images, rows

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


@pytest.fixture(params=["torch", "onnx"])
def runtime(request) -> str:
    """Each embed test on both runtimes; for ONNX, clipkit-tiny's export in ENV's cache."""
    if request.param == "onnx":
        request.getfixturevalue("tiny_export")
    return request.param


@pytest.fixture(scope="module")
def tiny_export() -> None:
    from clipkit.models import load_model
    from clipkit.models.onnx_export import export_onnx

    encoder = load_model(TINY, device="cpu")
    export_onnx(encoder, Path(ENV["CLIPKIT_ONNX_CACHE"]) / encoder.fingerprint)
    # what the cache's specs.json would say had `clipkit export` written it there
    from clipkit.models import exported

    previous = os.environ["CLIPKIT_ONNX_CACHE"]
    os.environ["CLIPKIT_ONNX_CACHE"] = ENV["CLIPKIT_ONNX_CACHE"]
    try:
        exported.remember_spec(encoder.spec, encoder.fingerprint)
    finally:
        os.environ["CLIPKIT_ONNX_CACHE"] = previous


def _start(args: list[str], log: Path) -> subprocess.Popen:
    # A session of its own, so that the signal can go to the whole group like a scheduler's.
    return subprocess.Popen(
        [sys.executable, "-m", "clipkit", *args],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        start_new_session=True,
    )


def _wait_for(path_test, what: str, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not path_test():
        assert process.poll() is None, f"finished before {what}"
        assert time.monotonic() < deadline, f"no {what} after {seconds} s"
        time.sleep(0.01)


def test_sigterm_to_the_group_keeps_embed_s_buffered_rows(tmp_path, runtime):
    data, out = tmp_path / "data", tmp_path / "out"
    make_images(data, 400, size=(24, 24))
    extra = ("--batch-size", "4", "--shard-rows", "100", "--runtime", runtime)
    args = embed_args(str(data), str(out), *extra, workers=1)
    process = _start(args, tmp_path / "log")
    _wait_for(lambda: (out / "part-00000.parquet").exists(), "the first shard", process)
    time.sleep(0.3)  # some rows of the second shard are now held in memory
    os.killpg(process.pid, signal.SIGTERM)
    assert process.wait(timeout=60) == 130, (tmp_path / "log").read_text()[-2000:]
    assert "Interrupted." in (tmp_path / "log").read_text()
    kept = len(rows(out))
    assert 100 < kept < 400, "the rows held past the first shard were written"
    resumed = subprocess.run(
        [sys.executable, "-m", "clipkit", *args], env=ENV, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert len(rows(out)) == 400
    assert f"already present {kept}" in " ".join(resumed.stderr.split())


def test_sigterm_to_the_group_saves_train_s_last_step(shapes, tmp_path):
    run = tmp_path / "run"
    args = [
        "train",
        str(shapes / "data"),
        "-o",
        str(run),
        "-m",
        TINY,
        "--device",
        "cpu",
        "--workers",
        "1",
        "--batch-size",
        "16",
        "--steps",
        "400",
        "--val-split",
        "0",
        "--save-every",
        "100000",
    ]
    process = _start(args, tmp_path / "log")
    metrics = run / "metrics.jsonl"
    _wait_for(lambda: len(_steps(metrics)) >= 3, "three steps", process)
    os.killpg(process.pid, signal.SIGTERM)
    assert process.wait(timeout=60) == 130, (tmp_path / "log").read_text()[-2000:]
    state = load_state(run / STATE_FILE)
    assert 3 <= state.step < 400 and not state.finished
    logged = len(_steps(metrics))  # a step ends, then is logged: the signal may fall between
    assert logged <= state.step <= logged + 1


def _steps(metrics: Path) -> list[dict]:
    if not metrics.exists():
        return []
    steps = []
    for line in metrics.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line being written
        if record.get("kind") == "step":
            steps.append(record)
    return steps


STUCK_EMBED = """
import sys, time
from clipkit.inputs import pipeline
real_read, marker = pipeline.read_bytes, sys.argv[-1]

def read_bytes(path, **kwargs):  # a hung network mount: the read never returns
    if path.endswith("img0003.png"):
        open(marker, "w").close()  # tell the test that a worker is stuck now
        time.sleep(3600)
    return real_read(path, **kwargs)

pipeline.read_bytes = read_bytes  # before the workers fork: they inherit it
sys.argv = ["clipkit", *sys.argv[1:-1]]
from clipkit.cli import main
main()
"""


def test_a_worker_stuck_in_a_read_does_not_keep_the_command_from_exiting(tmp_path, runtime):
    """SIGTERM to the main process alone (``timeout``, ``kill``): it stops in order, but a
    worker stuck in a read ignores SIGTERM, and the interpreter's exit joined it for ever."""
    data, out, stuck = tmp_path / "data", tmp_path / "out", tmp_path / "stuck"
    make_images(data, 8, size=(24, 24))
    args = embed_args(str(data), str(out), "--batch-size", "2", "--runtime", runtime, workers=1)
    process = subprocess.Popen(
        [sys.executable, "-c", STUCK_EMBED, *args, str(stuck)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "log").open("w"),
        start_new_session=True,
    )
    try:
        _wait_for(stuck.exists, "a stuck worker", process)
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 130, (tmp_path / "log").read_text()[-2000:]
    finally:
        os.killpg(process.pid, signal.SIGKILL) if process.poll() is None else None
    assert "Interrupted." in (tmp_path / "log").read_text()
