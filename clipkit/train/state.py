"""The training-run folder: resolved config, metrics log, checkpoints and the resume state.

``state.pt`` holds everything an exact resume needs (weights, optimizer, step, RNG streams,
best score) as tensors and plain containers only, so it loads with ``weights_only=True``.
``last``/``best`` ``.safetensors`` are the model alone, with its architecture embedded, for
every other command (``-m RUN_DIR``). All writes are atomic.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from clipkit.errors import InputError, UnsafeCheckpointError
from clipkit.infra.atomic import atomic_path, make_folder, write_failure
from clipkit.models.checkpoints import CheckpointMeta, write_checkpoint

CONFIG_FILE, METRICS_FILE, STATE_FILE = "config.json", "metrics.jsonl", "state.pt"
LAST_FILE, BEST_FILE = "last.safetensors", "best.safetensors"
PLOT_FILE = "training.png"
# Options that may differ on --resume: they change where and how fast, not what is computed.
RESUMABLE_CHANGES = frozenset({"resume", "device", "workers", "out", "wise_ft", "strict"})
# Options that may name a file or folder: recorded resolved, and compared so on --resume
# (`data/train` from inside the quickstart folder is `clipkit-quickstart/data/train`).
PATH_OPTIONS = ("data", "val", "eval_classes", "model")


def resolved_paths(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with each of PATH_OPTIONS that names an existing path made absolute."""
    return {
        key: _resolved(value) if key in PATH_OPTIONS else value for key, value in config.items()
    }


def _resolved(value: Any) -> Any:
    if not isinstance(value, str) or not value:
        return value
    path = Path(value).expanduser()
    return str(path.resolve()) if path.exists() else value


@dataclass
class ResumeState:
    """Where a run stands after a completed step."""

    step: int = 0
    best_score: float = float("-inf")
    finished: bool = False
    model: dict[str, torch.Tensor] = field(default_factory=dict)
    optimizer: dict[str, Any] = field(default_factory=dict)
    scaler: dict[str, Any] = field(default_factory=dict)
    rng: dict[str, Any] = field(default_factory=dict)
    # The objective's own state: momentum encoders, key queues, SSL heads (not the model).
    objective: dict[str, Any] = field(default_factory=dict)


def prepare_run_folder(out: Path, config: dict[str, Any], resume: bool) -> ResumeState | None:
    """Create a new run folder, or check that ``--resume`` continues the same run.

    Returns:
        The saved state to resume from, or None for a fresh run.

    Raises:
        InputError: the folder holds another run (without --resume), or --resume options differ.
    """
    saved_config = out / CONFIG_FILE
    if not resume:
        if saved_config.exists() or (out / STATE_FILE).exists():
            raise InputError(
                f"{out} already holds a training run.",
                "Add --resume to continue it, or choose another -o/--out folder.",
            )
        make_folder(out)
        write_json(saved_config, config)
        return None
    if not (out / STATE_FILE).is_file():
        if saved_config.exists():
            return None  # it stopped before its first checkpoint: start it again
        raise InputError(f"{out} holds no run to resume.", "Drop --resume to start a new run.")
    previous = _read_config(saved_config)
    changed = sorted(
        key
        for key in set(previous) | set(config)
        if key not in RESUMABLE_CHANGES
        and resolved_paths(previous).get(key) != resolved_paths(config).get(key)
    )
    if changed:
        detail = ", ".join(f"{k}: {previous.get(k)!r} -> {config.get(k)!r}" for k in changed)
        raise InputError(
            f"--resume must repeat the run's options; these differ: {detail}.",
            f"Re-run with the options in {saved_config}, or start a new run folder.",
        )
    return load_state(out / STATE_FILE)


def save_state(out: Path, state: ResumeState) -> None:
    payload = {
        "step": state.step,
        "best_score": state.best_score,
        "finished": state.finished,
        "model": {k: v.detach().cpu() for k, v in state.model.items()},
        "optimizer": state.optimizer,
        "scaler": state.scaler,
        "rng": state.rng,
        "objective": state.objective,
    }
    with atomic_path(out / STATE_FILE) as tmp:
        torch.save(payload, tmp)


def load_state(path: Path) -> ResumeState:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file: say so, never unpickle code
        raise UnsafeCheckpointError(
            f"{path} is not a readable clipkit resume state ({type(error).__name__}).",
            "Start a new run folder; the last checkpoint can seed it with -m RUN_DIR.",
        ) from None
    return ResumeState(**payload)


def save_model(out: Path, name: str, state_dict: dict[str, torch.Tensor], meta: CheckpointMeta):
    write_checkpoint(out / name, state_dict, meta)


def capture_rng() -> dict[str, Any]:
    """Every random stream a step may draw from, as tensors and plain values."""
    # The legacy tuple form (the default): (name, keys, position, has_gauss, cached_gaussian).
    numpy_state = cast(tuple[Any, ...], np.random.get_state())
    return {
        "python": random.getstate(),
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].copy()), *numpy_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(saved: dict[str, Any]) -> None:
    version, internal, gauss = saved["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = saved["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(saved["torch"])
    if saved["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["cuda"])


def _read_config(path: Path) -> dict[str, Any]:
    """A run's saved options (``config.json``).

    Raises:
        InputError: the file is unreadable, not UTF-8, not JSON or not an object: named.
    """
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        config, why = None, str(error).splitlines()[0]
    else:
        why = "not a JSON object"
    if not isinstance(config, dict):
        raise InputError(
            f"{path}, the options of the run to resume, is damaged ({why}).",
            f"Restore it, or start a new run folder seeded with the weights: "
            f"-m {path.parent / LAST_FILE}.",
        )
    return config


class MetricsLog:
    """``metrics.jsonl``: one JSON object per logged step and per evaluation."""

    def __init__(self, path: Path, resume_step: int | None) -> None:
        self.path = path
        if resume_step is not None and path.exists():
            # Lines past the resumed step came from work that was lost: drop them.
            kept = [line for line, record in self._records() if _step(record) <= resume_step]
            with atomic_path(path) as tmp:
                tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        elif resume_step is None:
            path.write_text("")

    def write(self, record: dict[str, Any]) -> None:
        try:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        except OSError as error:  # a full disk: the machine, not a bug
            raise write_failure(self.path, error) from None

    def read(self) -> list[dict[str, Any]]:
        return [record for _, record in self._records()]

    def _records(self) -> list[tuple[str, dict[str, Any]]]:
        """Each line with its record. The last line may be torn (the run was killed while
        writing it): it is dropped. Any other unreadable line is damage, and named.

        Raises:
            InputError: a line before the last is not UTF-8 JSON.
        """
        lines = self.path.read_bytes().split(b"\n")
        records = []
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
            except ValueError as error:  # UnicodeDecodeError is one
                if number >= len(lines) - 1:  # the last line (before the final newline)
                    continue
                raise InputError(
                    f"Line {number} of {self.path}, the run's log, is damaged "
                    f"({str(error).splitlines()[0]}).",
                    "Delete that line (or the file: only the log is lost, the weights are in "
                    f"{self.path.parent / STATE_FILE}) and run again.",
                ) from None
            records.append((line, record))
        return records


def _step(record: dict[str, Any]) -> int:
    try:
        return int(record.get("step", 0))
    except (TypeError, ValueError):
        return 1 << 62  # a record without a usable step number goes


def write_json(path: Path, value: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
