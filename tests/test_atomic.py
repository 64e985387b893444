"""Output paths: atomic writes (all or nothing, no temporary left behind, ordinary file
permissions), and paths in the way refused before any work."""

from __future__ import annotations

import os
import stat

import pytest

from clipkit.errors import ClipkitError, InputError
from clipkit.infra.atomic import atomic_path, check_output, make_folder
from tests.helpers import TINY


def test_success_replaces_the_target_with_ordinary_permissions(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_output_paths_in_the_way_are_refused_with_a_clear_error(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    cases = [
        (lambda: check_output(tmp_path), "is a folder, not a file name"),
        (lambda: check_output(a_file / "report.html"), "a_file is a file, not a folder"),
        (lambda: check_output(a_file / "deeper" / "x.csv"), "a_file is a file, not a folder"),
        (lambda: check_output(a_file, folder=True), "is a file, not a folder"),
        (lambda: make_folder(a_file / "run"), "a_file is a file, not a folder"),
        (lambda: atomic_path(tmp_path).__enter__(), "is a folder, not a file name"),
        (lambda: atomic_path(a_file / "x.txt").__enter__(), "a_file is a file"),
    ]
    for attempt, message in cases:
        with pytest.raises(InputError, match=message):
            attempt()
    assert a_file.read_text() == "mine" and sorted(tmp_path.iterdir()) == [a_file]


def test_paths_that_can_be_made_pass(tmp_path):
    assert check_output(tmp_path / "new" / "deeper" / "report.html") == (
        tmp_path / "new" / "deeper" / "report.html"
    )
    assert check_output(tmp_path, folder=True) == tmp_path
    made = make_folder(tmp_path / "x" / "y")
    assert made.is_dir() and make_folder(made) == made  # an existing folder is fine
    assert not (tmp_path / "new").exists()  # checking creates nothing


def test_a_full_disk_is_a_clear_error_and_keeps_the_old_file(tmp_path):
    import errno

    target = tmp_path / "out.txt"
    target.write_text("old")
    full = "Cannot write .*out.txt: No space left on device"
    with pytest.raises(ClipkitError, match=full), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def _full_disk(monkeypatch, free: int = 4096) -> None:
    """Make every folder report ``free`` bytes left, as on a full disk."""
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - free, free))


def test_a_library_s_own_word_for_a_full_disk_becomes_a_clear_error(tmp_path, monkeypatch):
    """#24 D6: torch.save said "unexpected pos 10728896 vs 10728784", safetensors raised
    SafetensorError, both reported as internal errors ("please report it")."""
    target = tmp_path / "state.pt"
    target.write_text("old")
    _full_disk(monkeypatch)
    with pytest.raises(ClipkitError) as refused, atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError(
            "[enforce fail at inline_container.cc:603] . unexpected pos 10728896 vs 10728784"
        )
    assert refused.value.message == (
        f"Cannot write {target}: No space left on device (4.0 KiB free on its disk)."
    )
    assert "Free some space" in refused.value.hint
    assert target.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["state.pt"]


def test_a_library_error_with_space_left_is_not_called_a_full_disk(tmp_path, monkeypatch):
    _full_disk(monkeypatch, free=50 * 2**30)
    with pytest.raises(RuntimeError, match="a bug"), atomic_path(tmp_path / "x.pt") as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("a bug")
    assert os.listdir(tmp_path) == []


def test_train_on_a_full_disk_names_the_checkpoint_and_the_space_left(
    shapes, tmp_path, monkeypatch
):
    import safetensors.torch

    from clipkit.train import TrainConfig, train

    def save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"\0" * 1000)
        raise safetensors.SafetensorError("Error while serializing: IoError(Os { code: 28 })")

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    _full_disk(monkeypatch, free=0)
    config = TrainConfig(
        data=str(shapes / "data"),
        out=str(tmp_path / "run"),
        model=TINY,
        batch_size=16,
        workers=0,
        val_split=0.0,
        steps=1,
    )
    with pytest.raises(
        ClipkitError,
        match="Cannot write .*last.safetensors: No space left on device \\(0 bytes free",
    ):
        train(config)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
def test_a_full_disk_while_the_log_is_appended_is_named():
    from pathlib import Path

    from clipkit.train.state import MetricsLog

    log = MetricsLog(Path("/dev/full"), None)  # every write to it fails with ENOSPC
    with pytest.raises(ClipkitError, match="Cannot write /dev/full: No space left on device"):
        log.write({"step": 1})
