"""Reading and writing model checkpoints safely: safetensors, or torch files without pickled code.

A checkpoint written by clipkit embeds its open_clip architecture config and preprocessing,
so its path alone is enough to load it. User-supplied files are never unpickled beyond
``torch.load(weights_only=True)``, which refuses anything but tensors and plain containers.
"""

from __future__ import annotations

import json
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from clipkit.errors import InputError, UnsafeCheckpointError
from clipkit.infra.atomic import atomic_path

FORMAT_VERSION = "1"
META_PREFIX = "clipkit."
# Looked for, in this order, when a spec names a training-run folder.
RUN_CHECKPOINT_NAMES = ("best.safetensors", "last.safetensors", "best.pt", "last.pt")


@dataclass(frozen=True)
class CheckpointMeta:
    """What a clipkit checkpoint records about the model it holds."""

    arch: str
    model_config: dict[str, Any]
    preprocess: dict[str, Any]
    source: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def to_strings(self) -> dict[str, str]:
        """Flatten to the ``str -> str`` mapping that safetensors metadata requires."""
        flat = {
            "format": FORMAT_VERSION,
            "arch": self.arch,
            "model_config": json.dumps(self.model_config, sort_keys=True),
            "preprocess": json.dumps(self.preprocess, sort_keys=True),
            "source": self.source,
        }
        flat.update({f"extra.{key}": str(value) for key, value in self.extra.items()})
        return {META_PREFIX + key: value for key, value in flat.items()}

    @classmethod
    def from_strings(cls, flat: dict[str, str]) -> CheckpointMeta | None:
        """Inverse of :meth:`to_strings`; None when the mapping holds no clipkit metadata."""
        ours = {k[len(META_PREFIX) :]: v for k, v in flat.items() if k.startswith(META_PREFIX)}
        if "model_config" not in ours:
            return None
        try:
            return cls(
                arch=ours.get("arch", "checkpoint"),
                model_config=json.loads(ours["model_config"]),
                preprocess=json.loads(ours.get("preprocess", "{}")),
                source=ours.get("source", ""),
                extra={k[len("extra.") :]: v for k, v in ours.items() if k.startswith("extra.")},
            )
        except json.JSONDecodeError as error:
            raise UnsafeCheckpointError(
                f"The clipkit metadata in this checkpoint is corrupt: {error}.",
                "Re-export the checkpoint, or load it as ARCH:PATH with its architecture name.",
            ) from None


@dataclass(frozen=True)
class Checkpoint:
    """Weights (name -> CPU tensor) and, for clipkit checkpoints, the model description."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    meta: CheckpointMeta | None


def resolve_checkpoint_file(path: Path) -> Path:
    """Return the checkpoint file a path names: the file itself, or the best one in a run folder.

    Raises:
        InputError: nothing usable exists at ``path``.
    """
    if path.is_file():
        return path
    if path.is_dir():
        for folder in (path, path / "checkpoints"):
            for name in RUN_CHECKPOINT_NAMES:
                if (folder / name).is_file():
                    return folder / name
        raise InputError(
            f"Folder {path} holds no checkpoint.",
            f"A training-run folder holds one of {', '.join(RUN_CHECKPOINT_NAMES)}.",
        )
    raise InputError(f"Checkpoint {path} does not exist.", "Check the path given to -m/--model.")


def read_checkpoint(path: Path) -> Checkpoint:
    """Load a checkpoint file or run folder onto the CPU without executing any pickled code.

    Raises:
        InputError: the path does not exist.
        UnsafeCheckpointError: the file would run code when unpickled, or is not a checkpoint.
    """
    file = resolve_checkpoint_file(path)
    kind = _sniff(file)
    if kind == "safetensors":
        state_dict, meta = _read_safetensors(file)
    elif kind == "torch":
        state_dict, meta = _read_torch(file)
    else:
        raise UnsafeCheckpointError(
            f"{file} is not a checkpoint: neither a safetensors file nor one torch.save wrote.",
            "Pass a .safetensors or .pt/.bin checkpoint, or a training-run folder.",
        )
    state_dict = _strip_prefix(state_dict, "module.")
    return Checkpoint(path=file, state_dict=state_dict, meta=meta)


def write_checkpoint(path: Path, state_dict: dict[str, torch.Tensor], meta: CheckpointMeta) -> Path:
    """Write weights and metadata atomically: safetensors for ``.safetensors``, else torch."""
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in state_dict.items()}
    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import save_file

            save_file(tensors, str(tmp), metadata=meta.to_strings())
        else:
            torch.save({"state_dict": tensors, "clipkit": meta.to_strings()}, tmp)
    return path


def _sniff(file: Path) -> str | None:
    """The format ``file`` holds, "safetensors", "torch" or None, from its first bytes.

    safetensors opens with an 8-byte header length and then its JSON header (checked first: the
    length's low byte may be 0x80); torch.save writes a zip archive (or, before torch 1.6, a
    pickle, which opens with the PROTO opcode 0x80).
    Anything else, a JSON file say, would otherwise reach the unpickler and be reported as a
    file that could run code.
    """
    try:
        with open(file, "rb") as handle:
            head = handle.read(9)
    except OSError as error:
        raise UnsafeCheckpointError(
            f"Cannot read {file}: {error.strerror}.", "Check the path and its permissions."
        ) from None
    if head[8:9] == b"{":
        return "safetensors"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return "torch"
    return None


def _read_safetensors(file: Path) -> tuple[dict[str, torch.Tensor], CheckpointMeta | None]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            state_dict = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as error:
        raise UnsafeCheckpointError(
            f"{file} is not a readable safetensors file: {error}.",
            "The file may be truncated or not a checkpoint; write it again.",
        ) from None
    return state_dict, CheckpointMeta.from_strings(metadata)


def _read_torch(file: Path) -> tuple[dict[str, torch.Tensor], CheckpointMeta | None]:
    try:
        # weights_only=True refuses any pickled global outside tensors and plain containers:
        # a file whose __reduce__ would run code fails here before anything runs.
        # A handle, not the name: torch would take a ".safetensors" name for the other format.
        with open(file, "rb") as handle:
            loaded = torch.load(handle, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise UnsafeCheckpointError(
            f"Refusing to load {file}: it contains pickled objects that could run code "
            f"({_unpickler_reason(error)}).",
            "Only load checkpoints you trust; convert them to .safetensors, or save just "
            "the state_dict of tensors.",
        ) from None
    except Exception as error:  # torch raises RuntimeError/EOFError/... for non-checkpoint files
        raise UnsafeCheckpointError(
            f"{file} could not be read as a checkpoint: {_first_line(error)}.",
            "The file may be truncated or not a model checkpoint.",
        ) from None
    meta = None
    if isinstance(loaded, dict) and isinstance(loaded.get("clipkit"), dict):
        meta = CheckpointMeta.from_strings(loaded["clipkit"])
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if (
        not isinstance(loaded, dict)
        or not loaded
        or not all(isinstance(v, torch.Tensor) for v in loaded.values())
    ):
        raise UnsafeCheckpointError(
            f"{file} does not hold a state dict of tensors.",
            "Save the model's state_dict() (or use clipkit's checkpoints).",
        )
    return loaded, meta


def _strip_prefix(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    # DistributedDataParallel saves every name under "module."; plain models do not.
    if state_dict and all(name.startswith(prefix) for name in state_dict):
        return {name[len(prefix) :]: t for name, t in state_dict.items()}
    return state_dict


def _unpickler_reason(error: BaseException) -> str:
    # torch's message is a long tutorial with terminal colour codes; keep only the culprit.
    text = str(error)
    culprit = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if culprit:
        return f"it names {culprit.group(1)}"
    reason = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    return reason.group(1).strip() if reason else "not a plain tensor file"


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
