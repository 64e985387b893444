"""``clipkit embed``: folders, files and tables to Parquet embeddings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from clipkit.cli.app import app, handles_errors
from clipkit.cli.console import stderr
from clipkit.cli.options import (
    ROWS_FILE,
    DeviceOption,
    EngineOption,
    IncludeHiddenOption,
    KindChoice,
    ModelOption,
    RayAddressOption,
    RuntimeOption,
    StrictOption,
    WorkersOption,
)
from clipkit.cli.render import print_skipped, run_bulk
from clipkit.config import DEFAULT_MODEL_SPEC, StoredPrecision
from clipkit.infra.atomic import check_output


@app.command()
@handles_errors
def embed(
    sources: Annotated[
        list[Path],
        typer.Argument(
            help="Folders, images, .txt files, CSV/TSV/JSONL/Parquet tables or WebDataset .tar "
            "shards."
        ),
    ],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Output embeddings folder.")],
    model: ModelOption = DEFAULT_MODEL_SPEC,
    kind: Annotated[KindChoice, typer.Option(help="Embed only images or only texts.")] = (
        KindChoice.auto
    ),
    batch_size: Annotated[int, typer.Option(min=1, help="Items per model call.")] = 64,
    workers: WorkersOption = None,
    device: DeviceOption = "auto",
    precision: Annotated[
        StoredPrecision, typer.Option(help="Stored embedding precision (fp16 halves the folder).")
    ] = "fp32",
    lines: Annotated[bool, typer.Option(help="A .txt SOURCE holds one text per line.")] = False,
    include_hidden: IncludeHiddenOption = False,
    image_column: Annotated[str | None, typer.Option(help="Table column of image paths.")] = None,
    text_column: Annotated[str | None, typer.Option(help="Table column of texts.")] = None,
    max_pixels: Annotated[
        int, typer.Option(min=1, help="Skip images larger than this (decompression bombs).")
    ] = 89_478_485,
    shard_rows: Annotated[int, typer.Option(min=1, help="Rows per Parquet shard.")] = 50_000,
    strict: StrictOption = False,
    prune: Annotated[
        bool,
        typer.Option(help="Mirror the sources: drop rows of deleted or changed inputs."),
    ] = False,
    rehash: Annotated[
        bool,
        typer.Option(help="Read every file again, even those with unchanged size and mtime."),
    ] = False,
    runtime: RuntimeOption = "auto",
    engine: EngineOption = "local",
    ray_address: RayAddressOption = None,
    gpus_per_worker: Annotated[
        float | None,
        typer.Option(
            min=0,
            metavar="N",
            help="GPUs of each Ray actor (--engine ray); 0: CPU actors.",
            show_default="1 where the cluster has GPUs",
        ),
    ] = None,
    report_duplicates: Annotated[
        Path | None,
        typer.Option(
            help="List the groups of identical content in the folder (one row per copy) to "
            f"a file: {ROWS_FILE}."
        ),
    ] = None,
) -> None:
    """Embed image and text folders, tables and shards to Parquet.

    Resumable and incremental: what is already embedded is not read again.

    Example: clipkit embed photos/ captions.csv -o emb/ -m clipkit-tiny:random
    """
    from clipkit.embed.run import EmbedConfig
    from clipkit.embed.run import embed as run_embed
    from clipkit.inputs.sources import Kind

    if report_duplicates is not None:
        from clipkit.store.reports import report_format

        report_format(report_duplicates)  # a suffix we cannot write fails before the work
        check_output(report_duplicates)

    config = EmbedConfig(
        sources=tuple(str(source) for source in sources),
        out_dir=out_dir,
        model=model,
        kind=Kind(kind.value),
        batch_size=batch_size,
        workers=workers,
        device=device,
        precision=precision,
        strict=strict,
        lines=lines,
        include_hidden=include_hidden,
        image_column=image_column,
        text_column=text_column,
        max_pixels=max_pixels,
        shard_rows=shard_rows,
        prune=prune,
        rehash=rehash,
        runtime=runtime,
        engine=engine,
        ray_address=ray_address,
        gpus_per_worker=gpus_per_worker,
    )
    result = run_bulk(run_embed, config, lambda failed: _report(failed, prune))
    if result.is_main:  # another rank of a torchrun job: rank 0 reports for all
        _report(result, prune)
        if report_duplicates is not None:
            _write_duplicates(out_dir, report_duplicates)


def _write_duplicates(out_dir: Path, path: Path) -> None:
    """One row per copy: its group (1 = the largest), the copies in it, kind, content id,
    uri, and the path that opens from here."""
    from clipkit import store
    from clipkit.inputs.filenames import locate, reading_base
    from clipkit.store.reports import write_report

    groups = store.duplicate_groups(out_dir)
    base = reading_base(store.read_base(out_dir))
    rows = [
        {
            "group": number,
            "copies": len(group.uris),
            "kind": group.kind,
            "id": group.id,
            "uri": uri,
            "path": locate(uri, base),
        }
        for number, group in enumerate(groups, start=1)
        for uri in group.uris
    ]
    columns = ["group", "copies", "kind", "id", "uri", "path"]
    write_report(path, rows, columns=columns)
    extra = sum(len(group.uris) - 1 for group in groups)
    stderr.print(
        f"{len(groups)} groups of identical content ({extra} extra copies) listed in {path}",
        markup=False,
        soft_wrap=True,
    )


def _report(result: Any, prune: bool) -> None:
    from clipkit.store import FAILURES_FILE

    print_skipped(result.failures, str(result.out_dir / FAILURES_FILE))
    notes = []
    if result.truncated_texts:
        notes.append(f"{result.truncated_texts} texts truncated to the model's context")
    if result.replaced_texts:
        notes.append(f"{result.replaced_texts} texts had invalid UTF-8 replaced")
    if result.aliases:
        notes.append(f"{result.aliases} duplicates recorded in _aliases.parquet")
    if result.changed:
        kept = "" if prune else " (their old rows remain: --prune drops them)"
        notes.append(f"{result.changed} inputs changed since they were embedded{kept}")
    if result.filled:
        notes.append(
            f"{result.filled} rows already present got this run's pass-through values "
            "(captions, links)"
        )
    if result.pruned or result.moved:
        moved = f", {result.moved} rows now name another copy" if result.moved else ""
        notes.append(f"pruned {result.pruned} rows of inputs no longer found{moved}")
    if result.engine == "ray":
        notes.append(f"with Ray: {result.device}")
    stderr.print(
        f"Embedded {result.embedded}, skipped {result.skipped}, already present "
        f"{result.already_present} in {result.seconds:.1f} s "
        f"({result.items_per_second:.1f} items/s) on {result.runtime.runtime} "
        f"({result.runtime.reason}) -> {result.out_dir}"
        + (f"; {'; '.join(notes)}" if notes else ""),
        markup=False,
    )
