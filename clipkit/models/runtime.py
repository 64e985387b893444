"""Which runtime encodes for a command: torch (open_clip) or ONNX Runtime (a cached export).

``auto`` takes the ONNX export of the model when the cache holds a whole one and the command
runs on the CPU: it starts in a fraction of the time, without torch. The export is found by
fingerprint: the one an artifact records (``load_matching_encoder``: search, zeroshot and audit
of embeddings), or the one the cache remembers for a spec (``load_encoder``: embed). Otherwise
torch, which needs no export. Every choice comes with the reason, for the summary line.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipkit.config import ENV_RUNTIME, RUNTIMES
from clipkit.errors import ClipkitError, InputError, UsageError
from clipkit.models.exported import MANIFEST_FILE, cached_export, fingerprint_of_spec
from clipkit.models.specs import ModelSpec, as_spec


@dataclass(frozen=True)
class RuntimeChoice:
    """``runtime`` is ``torch`` or ``onnx``; ``reason`` says why, in a few words."""

    runtime: str
    reason: str


def requested_runtime(runtime: str | None) -> str:
    """The runtime asked for: the option, else ``$CLIPKIT_RUNTIME``, else ``auto``."""
    chosen = (runtime or os.environ.get(ENV_RUNTIME) or "auto").strip().lower()
    if chosen not in RUNTIMES:
        raise UsageError(f"Unknown runtime {chosen!r}.", "Use auto, torch or onnx.")
    return chosen


def load_matching_encoder(
    recorded_spec: str,
    fingerprint: str,
    *,
    spec: str | ModelSpec | None = None,
    device: str = "auto",
    runtime: str | None = None,
) -> tuple[Any, RuntimeChoice]:
    """The encoder of the model that made an artifact, on the runtime asked for.

    Returns:
        A torch ``Encoder`` or an ``OnnxEncoder`` (same methods; the ONNX one returns NumPy
        arrays), and the choice with its reason.

    Raises:
        InputError: ``--runtime onnx`` without a usable export, and what ``load_matching_model``
            raises.
    """
    request = requested_runtime(runtime)
    given = None if spec is None else as_spec(spec)

    def on_torch() -> Any:
        from clipkit.models.openclip import load_matching_model

        return load_matching_model(recorded_spec, fingerprint, spec=given, device=device)

    return _choose(
        request,
        lambda: _onnx(recorded_spec, fingerprint, given, device, request),
        on_torch,
        recorded_spec,
    )


def load_encoder(
    spec: str | ModelSpec,
    *,
    device: str = "auto",
    runtime: str | None = None,
    bulk: bool = False,
) -> tuple[Any, RuntimeChoice]:
    """The model ``spec`` names, on the runtime asked for (for commands given a spec, not an
    artifact: ``embed``). ``auto`` takes the cached export that ``clipkit export`` or
    ``clipkit index`` made of this spec, on the CPU; ``bulk`` as in ``OnnxEncoder``.

    Raises:
        InputError: ``--runtime onnx`` without a usable export, and what ``load_model`` raises.
    """
    request = requested_runtime(runtime)
    parsed = as_spec(spec)

    def on_onnx() -> tuple[Any, str]:
        fingerprint = fingerprint_of_spec(parsed)
        if fingerprint is None:
            return None, f"{parsed.text} has no ONNX export in the cache"
        if request == "auto" and device == "auto" and _gpu_present():
            return None, "a GPU is present, and torch runs the model on it"
        return _onnx(parsed.recorded, fingerprint, None, device, request, bulk=bulk)

    def on_torch() -> Any:
        from clipkit.models.openclip import load_model

        return load_model(parsed, device=device)

    return _choose(request, on_onnx, on_torch, parsed.text)


def _choose(
    request: str,
    on_onnx: Callable[[], tuple[Any, str]],
    on_torch: Callable[[], Any],
    spec: str,
) -> tuple[Any, RuntimeChoice]:
    """ONNX where asked for (or, under auto, where it can run), else torch, with the reason.

    ``on_onnx`` gives the ONNX encoder, or None and why not.
    """
    if request == "torch":
        return on_torch(), RuntimeChoice("torch", "asked for")
    encoder, why_not = on_onnx()
    if encoder is not None:
        return encoder, RuntimeChoice("onnx", _export_reason(encoder))
    if request == "onnx":
        raise InputError(
            f"--runtime onnx cannot run here: {why_not}.",
            f"Export the model first: clipkit export -m {spec} (or --runtime torch).",
        )
    return on_torch(), RuntimeChoice("torch", f"auto: {why_not}")


def _export_reason(encoder: Any) -> str:
    precision = encoder.manifest.precision
    return f"export in {encoder.folder}" + ("" if precision == "fp32" else f", {precision}")


def _gpu_present() -> bool:
    """An NVIDIA driver is loaded (asked without torch, which would take seconds to tell)."""
    return Path("/proc/driver/nvidia/version").exists()


def _onnx(
    recorded_spec: str,
    fingerprint: str,
    spec: ModelSpec | None,
    device: str,
    request: str,
    *,
    bulk: bool = False,
) -> tuple[Any, str]:
    """The ONNX encoder, or None and why not. ``spec`` (``-m``) is the artifact's model when it
    names the same checkpoint however it is written (relative or absolute), or when the cache
    knows it loads the same fingerprint."""
    if (
        spec is not None
        and spec.recorded != recorded_spec
        and fingerprint_of_spec(spec) != fingerprint
    ):
        return None, f"-m {spec.text} is not the recorded model, and only torch can tell if it is"
    if request == "auto" and device not in ("auto", "cpu"):
        return None, f"--device {device} runs on torch unless --runtime onnx is asked for"
    folder = cached_export(fingerprint)
    if not (folder / MANIFEST_FILE).is_file():
        return None, f"no ONNX export of fingerprint {fingerprint} in the cache"
    from clipkit.models.onnx_encoder import load_onnx

    try:
        onnx_device = "cpu" if device == "auto" else device
        return load_onnx(folder, fingerprint=fingerprint, device=onnx_device, bulk=bulk), ""
    except InputError as error:
        if request == "onnx":
            raise
        return None, f"the cached export is unusable ({error.message.rstrip('.')})"


def ensure_cached_export(spec: str, fingerprint: str) -> tuple[Path | None, str]:
    """Make sure the cache holds a whole export of the model with this fingerprint, so that
    ``auto`` searches start without torch; returns its folder (None when there can be none)
    and a note for the user. Never raises for a model that cannot be exported: the index it
    serves is fine either way."""
    folder = cached_export(fingerprint)
    from clipkit.models.exported import read_export

    try:
        read_export(folder, fingerprint)
        return folder, f"the ONNX export for fast search is in {folder}"
    except InputError:
        pass  # missing or damaged: export it (again)
    from clipkit.models.onnx_export import export_onnx
    from clipkit.models.openclip import load_matching_model

    try:
        encoder = load_matching_model(spec, fingerprint, device="cpu")
        export_onnx(encoder, folder)
    except ClipkitError as error:
        return None, f"no ONNX export, so search will load torch ({error.message.rstrip('.')})"
    return folder, f"exported the model to {folder} for fast search"
