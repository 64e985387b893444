"""Device, precision, threads and seeds: each resolver returns the value and why it was chosen.

torch is imported by the functions that ask it, not with the module: ``Resolved`` also
describes where the ONNX runtime runs, which must not load torch.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from clipkit.config import COMPUTE_PRECISIONS
from clipkit.errors import DeviceError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Resolved:
    """A resolved runtime choice and the reason for it, for reporting to the user."""

    value: str
    reason: str


def resolve_device(request: str = "auto") -> Resolved:
    """Turn ``auto|cpu|cuda|cuda:N|mps`` into a concrete device string.

    Raises:
        DeviceError: the device is unknown or not present on this machine.
    """
    import torch

    request = (request or "auto").strip().lower()
    if request == "auto":
        if torch.cuda.is_available():
            return Resolved("cuda", "auto: CUDA is available")
        if _mps_available():
            return Resolved("mps", "auto: Apple MPS is available")
        return Resolved("cpu", "auto: no CUDA or MPS device found")
    if request == "cpu":
        return Resolved("cpu", "requested")
    if request == "mps":
        if not _mps_available():
            raise DeviceError("MPS was requested but is not available.", "Use --device cpu.")
        return Resolved("mps", "requested")
    if request == "cuda" or request.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"Device {request!r} was requested but CUDA is not available here.",
                "Use --device cpu, or --device auto to pick the best device present.",
            )
        _, colon, index = request.partition(":")
        if colon and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise DeviceError(
                f"No CUDA device {index!r}: this machine has {torch.cuda.device_count()}.",
                "Use --device cuda:0 or --device cuda.",
            )
        return Resolved(request, "requested")
    raise DeviceError(f"Unknown device {request!r}.", "Use one of: auto, cpu, cuda, cuda:N, mps.")


def resolve_precision(device: str, request: str = "auto") -> Resolved:
    """Choose the compute precision: ``fp32`` on CPU/MPS, ``bf16``/``fp16`` autocast on CUDA.

    Args:
        device: a device string from :func:`resolve_device`.
        request: ``auto``, ``fp32``, ``fp16`` or ``bf16``.
    """
    import torch

    request = (request or "auto").strip().lower()
    if request not in COMPUTE_PRECISIONS:
        raise DeviceError(
            f"Unknown precision {request!r}.", f"Use one of: {', '.join(COMPUTE_PRECISIONS)}."
        )
    on_cuda = device.startswith("cuda")
    if request == "auto":
        if not on_cuda:
            return Resolved("fp32", f"auto: {device} runs in float32")
        if torch.cuda.is_bf16_supported():
            return Resolved("bf16", "auto: CUDA with bfloat16 support (autocast)")
        return Resolved("fp16", "auto: CUDA without bfloat16 (float16 autocast)")
    if request != "fp32" and not on_cuda:
        raise DeviceError(
            f"Precision {request} needs a CUDA device; this run is on {device}.",
            "Use --precision fp32 (or auto) on CPU.",
        )
    return Resolved(request, "requested")


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype for a precision name, or None for plain float32."""
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy (when present) and torch for reproducible runs."""
    import torch

    random.seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # numpy is a dependency, but seeding must never be the thing that fails
        pass
    torch.manual_seed(seed)


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())
