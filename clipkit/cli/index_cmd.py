"""``clipkit index``: a FAISS index of an embeddings folder, exact or approximate."""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from clipkit.cli.app import app, handles_errors
from clipkit.cli.console import stderr
from clipkit.cli.options import KindChoice


class IndexType(str, Enum):
    auto = "auto"
    flat = "flat"
    hnsw = "hnsw"
    ivf = "ivf"
    ivfpq = "ivfpq"


@app.command()
@handles_errors
def index(
    emb_dir: Annotated[Path, typer.Argument(help="Embeddings folder made by clipkit embed.")],
    out_dir: Annotated[
        Path | None, typer.Option("--out", "-o", help="Index folder.", show_default="EMB_DIR/index")
    ] = None,
    kind: Annotated[
        KindChoice, typer.Option(help="Rows to index (auto: images if any, else texts).")
    ] = KindChoice.auto,
    index_type: Annotated[IndexType, typer.Option("--type", help="FAISS index family.")] = (
        IndexType.auto
    ),
    max_memory: Annotated[
        str | None, typer.Option(help="Memory budget for the index, e.g. 4GB (auto type).")
    ] = None,
    flat_threshold: Annotated[
        int, typer.Option(min=0, help="Up to this many rows, auto builds an exact index.")
    ] = 100_000,
    target_recall: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Tune search until recall@10 reaches this.")
    ] = 0.95,
    update: Annotated[bool, typer.Option(help="Add rows new in EMB_DIR to the index.")] = False,
    onnx_export: Annotated[
        bool,
        typer.Option(
            "--onnx-export/--no-onnx-export",
            help="Export the model to the ONNX cache when missing, so searches start fast.",
        ),
    ] = True,
) -> None:
    """Build a FAISS index, exact or approximate, recall measured.

    Example: clipkit index emb/ -o emb-index/
    """
    from clipkit.index.config import IndexConfig, preflight

    config = IndexConfig(
        emb_dir=emb_dir,
        out_dir=out_dir or emb_dir / "index",
        kind=kind.value,
        index_type=index_type.value,
        max_memory=_parse_size(max_memory) if max_memory else None,
        flat_threshold=flat_threshold,
        target_recall=target_recall,
        update=update,
    )
    preflight(config)  # before faiss and torch: a mistyped folder is reported at once
    from clipkit.index.build import build_index

    stderr.print("Building index…" if not update else "Updating index…")
    result = build_index(config)
    info = result.info
    recall = ", ".join(f"{k} {v:.3f}" for k, v in info.recall_at_10.items() if v is not None)
    params = ", ".join(f"{k}={v}" for k, v in info.params.items()) or "exact"
    stderr.print(
        f"Index {info.factory} ({params}) of {info.rows} {info.kind} rows -> {result.out_dir}; "
        f"recall@10: {recall or 'n/a'}; added {result.added}"
        + (f", dropped {result.dropped} rows no longer in {emb_dir}" if result.dropped else "")
        + (
            f", {result.removed} rows no longer in {emb_dir} (rebuild to drop them)"
            if result.removed
            else ""
        ),
        markup=False,
    )
    if onnx_export:
        from clipkit.models.runtime import ensure_cached_export

        _, note = ensure_cached_export(info.model, info.fingerprint)
        stderr.print(note[0].upper() + note[1:] + ".", markup=False)


def _parse_size(text: str) -> int:
    """'512MB', '4G', '1.5GiB' or a byte count -> bytes (binary multiples)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)I?B?\s*", text.upper())
    if not match:
        raise typer.BadParameter(f"{text!r} is not a size like 512MB or 4GB.")
    number, unit = match.groups()
    return int(float(number) * 1024 ** " KMGT".index(unit or " "))
