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

pytestmark = pytest.mark.e2e  # every test runs clipkit in processes of its own


def _env() -> dict[str, str]:
    """This test's environment (its own ONNX cache) for the processes it starts."""
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


@pytest.fixture(params=["torch", "onnx"])
def runtime(request) -> str:
    """Each embed test on both runtimes; for ONNX, clipkit-tiny's export in the test's cache."""
    if request.param == "onnx":
        request.getfixturevalue("cached_tiny_export")
    return request.param


def _start(args: list[str], log: Path) -> subprocess.Popen:
    # A session of its own, so that the signal can go to the whole group like a scheduler's.
    return subprocess.Popen(
        [sys.executable, "-m", "clipkit", *args],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        start_new_session=True,
    )


def _wait_for(path_test, what: str, process: subprocess.Popen, seconds: float = 120) -> None:
    """Wait for a file the process writes (checked every 10 ms): no test result depends on
    when it appears, only on its appearing."""
    deadline = time.monotonic() + seconds
    while not path_test():
        assert process.poll() is None, f"finished before {what}"
        assert time.monotonic() < deadline, f"no {what} after {seconds} s"
        time.sleep(0.01)


# clipkit embed whose encoder stops before its batch number HOLD_AT (argv[-2]) and says so in
# a marker file (argv[-1]): every earlier batch's rows are in shards or held in memory.
HELD_EMBED = """
import sys, time
from clipkit.embed import run as embed_run
real_load, hold_at, marker = embed_run.load_encoder, int(sys.argv[-2]), sys.argv[-1]

class Held:
    def __init__(self, encoder):
        self._encoder, self._batches = encoder, 0

    def __getattr__(self, name):
        return getattr(self._encoder, name)

    def encode_images(self, pixels):
        self._batches += 1
        if self._batches == hold_at:
            open(marker, "w").close()
            time.sleep(3600)  # until SIGTERM, which the CLI turns into KeyboardInterrupt
        return self._encoder.encode_images(pixels)

def load_encoder(*args, **kwargs):
    encoder, runtime = real_load(*args, **kwargs)
    return Held(encoder), runtime

embed_run.load_encoder = load_encoder
sys.argv = ["clipkit", *sys.argv[1:-2]]
from clipkit.cli import main
main()
"""


def test_sigterm_to_the_group_keeps_embed_s_buffered_rows(tmp_path, runtime):
    """400 images in batches of 4, shards of 100: held before batch 31, 120 rows are embedded,
    100 in the first shard and 20 in memory, and SIGTERM must keep all 120."""
    data, out, held = tmp_path / "data", tmp_path / "out", tmp_path / "held"
    make_images(data, 400, size=(24, 24))
    extra = ("--batch-size", "4", "--shard-rows", "100", "--runtime", runtime)
    args = embed_args(str(data), str(out), *extra, workers=1)
    process = subprocess.Popen(
        [sys.executable, "-c", HELD_EMBED, *args, "31", str(held)],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "log").open("w"),
        start_new_session=True,
    )
    _wait_for(held.exists, "the hold before batch 31", process)
    os.killpg(process.pid, signal.SIGTERM)
    assert process.wait(timeout=60) == 130, (tmp_path / "log").read_text()[-2000:]
    assert "Interrupted." in (tmp_path / "log").read_text()
    assert len(rows(out)) == 120, "the 20 rows held past the first shard were written"
    resumed = subprocess.run(
        [sys.executable, "-m", "clipkit", *args], env=_env(), capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert len(rows(out)) == 400
    assert "already present 120" in " ".join(resumed.stderr.split())


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
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "log").open("w"),
        start_new_session=True,
    )
    try:
        _wait_for(stuck.exists, "a stuck worker", process)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 130, (tmp_path / "log").read_text()[-2000:]
    finally:
        os.killpg(process.pid, signal.SIGKILL) if process.poll() is None else None
    assert "Interrupted." in (tmp_path / "log").read_text()
