"""``clipkit export``: a model's towers as ONNX graphs, for the runtime without torch."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from clipkit.cli.app import app, handles_errors, stderr
from clipkit.config import DEFAULT_MODEL_SPEC, ENV_MODEL


@app.command()
@handles_errors
def export(
    model: Annotated[
        str,
        typer.Argument(
            metavar="SPEC",
            envvar=ENV_MODEL,
            help="Model spec: ARCH[:TAG], hf-hub:org/repo, or a checkpoint or run folder.",
        ),
    ] = DEFAULT_MODEL_SPEC,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Export folder (default: the cache, by fingerprint)."),
    ] = None,
) -> None:
    """Export a model to ONNX, for the runtime without torch.

    Example: clipkit export runs/shapes -o shapes-onnx/
    """
    from clipkit.models.exported import cached_export
    from clipkit.models.onnx_export import export_onnx
    from clipkit.models.openclip import load_model

    started = time.perf_counter()
    encoder = load_model(model, device="cpu", precision="fp32")
    target = out_dir if out_dir is not None else cached_export(encoder.fingerprint)
    manifest = export_onnx(encoder, target)
    size = sum(record["bytes"] for record in manifest.files.values())
    stderr.print(
        f"Exported {manifest.spec} (fingerprint {manifest.fingerprint}, {manifest.embed_dim}-d, "
        f"{manifest.precision}) to {target}: {size / 1e6:.1f} MB in "
        f"{time.perf_counter() - started:.1f} s",
        markup=False,
    )
