"""``clipkit export``: a model's towers as ONNX graphs, for the runtime without torch."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from clipkit.cli.app import app, handles_errors
from clipkit.cli.console import stderr
from clipkit.cli.options import ModelOption
from clipkit.config import DEFAULT_MODEL_SPEC, ExportPrecision

INT8_PROBE_PAIRS = 256  # generated captioned shapes that int8 must answer on as fp32 does


@app.command()
@handles_errors
def export(
    model: ModelOption = DEFAULT_MODEL_SPEC,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Export folder.", show_default="the cache, by fingerprint"
        ),
    ] = None,
    precision: Annotated[
        ExportPrecision,
        typer.Option(
            help="The graphs' weights. int8: a quarter of the size, offered where its answers "
            "(top-10 overlap, recall@10) stay within 0.01 of fp32's, measured at export."
        ),
    ] = "fp32",
) -> None:
    """Export a model to ONNX, for the runtime without torch.

    Example: clipkit export -m runs/shapes -o shapes-onnx/
    """
    from clipkit.models.exported import cached_export
    from clipkit.models.onnx_export import export_onnx
    from clipkit.models.openclip import load_model

    started = time.perf_counter()
    encoder = load_model(model, device="cpu", precision="fp32")
    target = out_dir if out_dir is not None else cached_export(encoder.fingerprint)
    probe = None
    if precision == "int8":
        from clipkit.inputs.synthetic import captioned_shapes

        probe = captioned_shapes(INT8_PROBE_PAIRS)
    manifest = export_onnx(encoder, target, precision, probe)
    size = sum(record["bytes"] for record in manifest.files.values())
    stderr.print(
        f"Exported {manifest.spec} (fingerprint {manifest.fingerprint}, {manifest.embed_dim}-d, "
        f"{manifest.precision}) to {target}: {size / 1e6:.1f} MB in "
        f"{time.perf_counter() - started:.1f} s",
        markup=False,
    )
    if manifest.agreement is not None:
        a = manifest.agreement
        stderr.print(
            f"int8 against fp32 on {INT8_PROBE_PAIRS} generated captioned shapes: top-10 overlap "
            f"{a['top10_overlap']:.3f}, recall@10 {a['recall_at_10_int8']:.3f} against "
            f"{a['recall_at_10_fp32']:.3f}",
            markup=False,
        )
