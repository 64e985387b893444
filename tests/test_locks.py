"""One writer per output folder: embed, index and train refuse a folder that another clipkit
command is writing (two concurrent embeds into one folder used to rename their shards over
each other: 3,000 of 6,000 rows lost, both reporting success). The lock dies with its process,
``kill -9`` included."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from clipkit import cli
from clipkit.embed import EmbedConfig, embed
from clipkit.errors import InputError
from clipkit.index import IndexConfig, build_index
from clipkit.infra.locks import LOCK_FILE, writer_lock
from clipkit.train import TrainConfig, train
from tests.helpers import TINY, embed_args, make_images, rows

runner = CliRunner()


def test_a_held_folder_is_refused_naming_the_holder(tmp_path):
    folder = tmp_path / "new" / "out"
    with writer_lock(folder, "embed -o out") as held:
        assert held == folder and folder.is_dir()  # made if missing
        assert (folder / LOCK_FILE).read_text() == f"pid {os.getpid()}: clipkit embed -o out\n"
        holder = rf"another clipkit command \(pid {os.getpid()}: clipkit embed -o out\)"
        with pytest.raises(InputError, match=holder) as refused, writer_lock(folder, "index"):
            pass
        assert "another folder" in refused.value.hint
    with writer_lock(folder, "index -o out"):  # released at the end of the block
        pass


def test_a_lock_that_need_not_create_leaves_a_missing_folder_missing(tmp_path):
    with writer_lock(tmp_path / "absent", "index --update", create=False):
        pass
    assert not (tmp_path / "absent").exists()


def test_other_ranks_neither_lock_nor_create(tmp_path):
    with (
        writer_lock(tmp_path / "out", "embed"),
        writer_lock(tmp_path / "out", "embed", active=False),
    ):
        pass
    with writer_lock(tmp_path / "rank1", "embed", active=False):
        pass
    assert not (tmp_path / "rank1").exists()


def test_embed_into_a_folder_being_written_is_refused_and_touches_nothing(tmp_path):
    make_images(tmp_path / "a", 3)
    out = tmp_path / "out"
    first = embed(
        EmbedConfig(
            sources=(str(tmp_path / "a"),), out_dir=out, model=TINY, device="cpu", workers=0
        )
    )
    assert first.embedded == 3
    before = sorted(path.name for path in out.iterdir())
    make_images(tmp_path / "b", 2, start=10)
    refused = pytest.raises(InputError, match="being written by another clipkit command")
    with writer_lock(out, "embed -o out"), refused:
        embed(
            EmbedConfig(
                sources=(str(tmp_path / "b"),), out_dir=out, model=TINY, device="cpu", workers=0
            )
        )
    assert sorted(path.name for path in out.iterdir()) == before
    assert len(rows(out)) == 3


def test_index_build_and_update_into_a_folder_being_written_are_refused(tmp_path):
    make_images(tmp_path / "a", 3)
    embed(
        EmbedConfig(
            sources=(str(tmp_path / "a"),),
            out_dir=tmp_path / "emb",
            model=TINY,
            device="cpu",
            workers=0,
        )
    )
    build_index(IndexConfig(emb_dir=tmp_path / "emb", out_dir=tmp_path / "idx"))
    with writer_lock(tmp_path / "idx", "index -o idx"):
        for update in (False, True):
            with pytest.raises(InputError, match="being written by another clipkit command"):
                build_index(
                    IndexConfig(emb_dir=tmp_path / "emb", out_dir=tmp_path / "idx", update=update)
                )


def test_train_into_a_run_folder_being_written_is_refused(shapes, tmp_path):
    config = TrainConfig(
        data=str(shapes / "data"),
        out=str(tmp_path / "run"),
        model=TINY,
        batch_size=16,
        workers=0,
        steps=1,
        val_split=0,
    )
    with writer_lock(tmp_path / "run", "train -o run"):
        for resume in (False, True):
            with pytest.raises(InputError, match="being written by another clipkit command"):
                train(dataclasses.replace(config, resume=resume))
    assert sorted(path.name for path in (tmp_path / "run").iterdir()) == [LOCK_FILE]
    assert train(config).steps_done == 1  # and once the other command is gone, it runs


_HOLDER = """
import sys, time
from clipkit.infra.locks import writer_lock
with writer_lock(sys.argv[1], "embed -o elsewhere"):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.mark.e2e
def test_a_lock_held_by_another_process_is_refused_until_it_is_killed(tmp_path):
    make_images(tmp_path / "a", 2)
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        args = embed_args(str(tmp_path / "a"), str(out))
        refused = runner.invoke(cli.app, args)
        assert refused.exit_code == 1
        message = " ".join(refused.output.split())
        assert f"(pid {holder.pid}: clipkit embed -o elsewhere)" in message
        assert "Hint:" in message
        holder.send_signal(signal.SIGKILL)  # no clean-up runs: the kernel drops the lock
        holder.wait(timeout=30)
        time.sleep(0.1)
        done = runner.invoke(cli.app, args)
        assert done.exit_code == 0, done.output
        assert len(rows(out)) == 2
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_a_file_system_without_locks_lets_the_command_run(tmp_path, monkeypatch):
    import errno

    from clipkit.infra import locks

    def refuse(handle, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(locks.fcntl, "flock", refuse)
    with writer_lock(tmp_path / "out", "embed") as folder:
        assert folder.is_dir()  # unguarded, as before locks existed, rather than refused


_FORKS_THEN_DIES = """
import multiprocessing, os, signal, sys, time
from clipkit.infra.locks import writer_lock

def worker(ready):
    ready.set()
    time.sleep(60)  # a decode worker that has not noticed its parent died yet

with writer_lock(sys.argv[1], "embed -o here"):
    ready = multiprocessing.get_context("fork").Event()
    child = multiprocessing.get_context("fork").Process(target=worker, args=(ready,))
    child.start()
    ready.wait(30)
    print(child.pid, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.e2e
def test_a_killed_command_s_orphaned_workers_do_not_hold_its_folder(tmp_path):
    """#24 D7: after `kill -9` of embed, its decode workers (forked, so sharing the lock's
    open file) held the folder for up to ~5 s, and a re-run was refused naming a dead pid."""
    out = tmp_path / "out"
    parent = subprocess.Popen(
        [sys.executable, "-c", _FORKS_THEN_DIES, str(out)], stdout=subprocess.PIPE, text=True
    )
    orphan = int(parent.stdout.readline())  # not read to its end: the orphan holds the pipe
    assert parent.wait(timeout=30) == -signal.SIGKILL
    try:
        os.kill(orphan, 0)  # still running
        with writer_lock(out, "embed -o here"):  # not refused
            pass
    finally:
        os.kill(orphan, signal.SIGKILL)


@pytest.mark.e2e
def test_a_lock_whose_recorded_writer_has_ended_says_so(tmp_path):
    import fcntl

    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with open(out / LOCK_FILE, "w") as handle:  # held here, recorded as the dead process's
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.write(f"pid {dead.pid}: clipkit embed -o out\n")
        handle.flush()
        with pytest.raises(InputError) as refused, writer_lock(out, "index"):
            pass
    assert (
        f"(pid {dead.pid}: clipkit embed -o out, which has ended: a process it started "
        "still holds the folder)" in refused.value.message
    )
