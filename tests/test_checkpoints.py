"""Checkpoint files: round trips, run folders, and refusal of pickles that would run code."""

from __future__ import annotations

import pickle

import pytest
import torch

from clipkit.errors import InputError, UnsafeCheckpointError
from clipkit.models.checkpoints import CheckpointMeta, read_checkpoint, write_checkpoint
from tests.helpers import TINY

META = CheckpointMeta(
    arch="clipkit-tiny",
    model_config={"embed_dim": 4, "vision_cfg": {"layers": 1}, "text_cfg": {"layers": 1}},
    preprocess={"size": 64, "mean": [0.5, 0.5, 0.5]},
    source=TINY,
    extra={"step": "12"},
)


def _weights():
    return {
        "a.weight": torch.arange(6.0).reshape(2, 3),
        "b": torch.tensor([1, 2], dtype=torch.int64),
    }


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_round_trip_keeps_weights_and_metadata(tmp_path, suffix):
    path = write_checkpoint(tmp_path / f"model{suffix}", _weights(), META)
    loaded = read_checkpoint(path)
    assert loaded.meta == META
    assert loaded.state_dict.keys() == _weights().keys()
    for name, tensor in _weights().items():
        assert torch.equal(loaded.state_dict[name], tensor)
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_run_folder_prefers_best_then_last(tmp_path):
    write_checkpoint(tmp_path / "last.safetensors", _weights(), META)
    assert read_checkpoint(tmp_path).path.name == "last.safetensors"
    write_checkpoint(tmp_path / "best.safetensors", _weights(), META)
    assert read_checkpoint(tmp_path).path.name == "best.safetensors"


def test_empty_folder_and_missing_file(tmp_path):
    with pytest.raises(InputError, match="holds no checkpoint"):
        read_checkpoint(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.pt")


def test_plain_state_dict_and_ddp_prefix(tmp_path):
    torch.save({f"module.{k}": v for k, v in _weights().items()}, tmp_path / "ddp.pt")
    loaded = read_checkpoint(tmp_path / "ddp.pt")
    assert loaded.meta is None
    assert set(loaded.state_dict) == set(_weights())


class _WritesAFile:
    """Unpickling this would create ``target``: the proof that code ran."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (exec, (f"open({self.target!r}, 'w').write('pwned')",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, writer):
    marker = tmp_path / "pwned.txt"
    payload = {"state_dict": {"w": torch.zeros(1)}, "extra": _WritesAFile(marker)}
    path = tmp_path / "evil.pt"
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as handle:
            pickle.dump(payload, handle)
    with pytest.raises(UnsafeCheckpointError, match="Refusing to load") as info:
        read_checkpoint(path)
    if writer == "torch.save":  # plain pickle protocol 4 is refused before its globals are read
        assert "exec" in info.value.message
    assert not marker.exists()


@pytest.mark.parametrize(
    ("name", "content"),
    [("zero.pt", b""), ("junk.pt", b"not a checkpoint at all"), ("junk.safetensors", b"\x00" * 7)],
)
def test_unreadable_files(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(UnsafeCheckpointError):
        read_checkpoint(tmp_path / name)


def test_truncated_safetensors(tmp_path):
    path = write_checkpoint(tmp_path / "m.safetensors", _weights(), META)
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(UnsafeCheckpointError, match="not a readable safetensors"):
        read_checkpoint(path)


def test_non_tensor_payload(tmp_path):
    torch.save({"epoch": 3, "name": "x"}, tmp_path / "meta_only.pt")
    with pytest.raises(UnsafeCheckpointError, match="state dict of tensors"):
        read_checkpoint(tmp_path / "meta_only.pt")


def test_files_are_read_by_their_content_not_their_name(tmp_path):
    weights = _weights()
    safetensors_as_pt = write_checkpoint(tmp_path / "m.safetensors", weights, META).rename(
        tmp_path / "renamed.pt"
    )
    torch_as_safetensors = write_checkpoint(tmp_path / "m.pt", weights, META).rename(
        tmp_path / "renamed.safetensors"
    )
    for path in (safetensors_as_pt, torch_as_safetensors):
        loaded = read_checkpoint(path).state_dict
        assert all(torch.equal(loaded[name], value) for name, value in weights.items())
    # A JSON file is not "pickled objects that could run code": it is no checkpoint at all.
    (tmp_path / "config.json").write_text('{"model": "clipkit-tiny"}')
    with pytest.raises(UnsafeCheckpointError, match="is not a checkpoint") as refused:
        read_checkpoint(tmp_path / "config.json")
    assert "could run code" not in refused.value.message
