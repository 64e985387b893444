"""``clipkit audit``: flag mismatched image-caption pairs and suggest the right caption."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Column, Table

from clipkit.audit.config import (
    COMPARED_FPR,
    DEFAULT_MIN_PROBABILITY,
    PROBABILITY_MIN_PAIRS,
    LongCaptions,
)
from clipkit.cli.app import app, handles_errors
from clipkit.cli.console import stderr, stdout
from clipkit.cli.options import (
    ROWS_FILE,
    DeviceOption,
    IncludeHiddenOption,
    RecordedModelOption,
    RowsFormat,
    RowsFormatOption,
    RuntimeOption,
    StrictOption,
    WorkersOption,
)
from clipkit.cli.render import cell, path_cell, print_rows, print_skipped, run_bulk
from clipkit.cli.settings import fallback_model
from clipkit.infra.atomic import check_output


@app.command()
@handles_errors
def audit(
    data: Annotated[
        Path,
        typer.Argument(help="Pairs (folder with .txt captions, table, WebDataset) or embeddings."),
    ],
    model: RecordedModelOption = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help=f"Per-pair report file: {ROWS_FILE}."),
    ] = None,
    output: RowsFormatOption = RowsFormat.table,
    html_out: Annotated[Path | None, typer.Option("--html", help="HTML report.")] = None,
    write_clean: Annotated[
        Path | None,
        typer.Option(
            help="The data without the flagged pairs, as a table (.csv/.tsv/.jsonl/.parquet): "
            "a table keeps its columns; other sources give image and caption."
        ),
    ] = None,
    write_flagged: Annotated[
        Path | None,
        typer.Option(help="The flagged pairs with scores and suggested captions, as a table."),
    ] = None,
    min_probability: Annotated[
        float | None,
        typer.Option(
            help="Flag pairs at least this likely to be mismatched.",
            show_default=f"{DEFAULT_MIN_PROBABILITY}; with fewer than {PROBABILITY_MIN_PAIRS} "
            f"pairs, --fpr {COMPARED_FPR}",
        ),
    ] = None,
    max_flags: Annotated[
        int | None, typer.Option(min=0, help="Flag at most N pairs, the most suspicious.")
    ] = None,
    fpr: Annotated[
        float | None,
        typer.Option(
            help="Instead: flag by the shuffled-pair null, letting this share of unrelated "
            "pairs pass (e.g. 0.01)."
        ),
    ] = None,
    threshold: Annotated[
        float | None, typer.Option(help="Instead: flag cosine below this raw threshold.")
    ] = None,
    top: Annotated[int, typer.Option(min=0, help="Flagged pairs shown in the table.")] = 20,
    fail_on_flags: Annotated[
        bool, typer.Option(help="Exit 1 when any pair is flagged (for pipelines).")
    ] = False,
    long_captions: Annotated[
        LongCaptions, typer.Option(help="truncate at the context, or chunk (best window).")
    ] = "truncate",
    neighbours: Annotated[int, typer.Option(min=1, help="CSLS neighbourhood size.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed of the caption shuffles.")] = 0,
    batch_size: Annotated[int, typer.Option(min=1, help="Items per model call.")] = 64,
    workers: WorkersOption = None,
    device: DeviceOption = "auto",
    include_hidden: IncludeHiddenOption = False,
    image_column: Annotated[str | None, typer.Option(help="Table column of image paths.")] = None,
    text_column: Annotated[str | None, typer.Option(help="Table column of captions.")] = None,
    strict: StrictOption = False,
    runtime: RuntimeOption = "auto",
) -> None:
    """Flag mismatched image-caption pairs and suggest captions.

    Example: clipkit audit pairs.csv -m runs/shapes --html audit.html --max-flags 50
    """
    from clipkit.audit.config import AuditConfig, preflight
    from clipkit.store.reports import report_format, write_report

    if out is not None:
        report_format(out)  # fail before any work on a suffix we cannot write
    for path in (out, html_out):
        if path is not None:
            check_output(path)  # before the work, not after it
    from clipkit.audit.clean import check_table_output

    for path, option in ((write_clean, "--write-clean"), (write_flagged, "--write-flagged")):
        if path is not None:
            check_table_output(path, option)
    config = AuditConfig(
        data=data,
        model=model,
        default_model=fallback_model(None).value,
        min_probability=min_probability,
        max_flags=max_flags,
        fpr=fpr,
        threshold=threshold,
        long_captions=long_captions,
        neighbours=neighbours,
        seed=seed,
        batch_size=batch_size,
        workers=workers,
        device=device,
        include_hidden=include_hidden,
        image_column=image_column,
        text_column=text_column,
        strict=strict,
        runtime=runtime,
    )
    preflight(config)  # before torch: a mistake here is reported in a blink
    from clipkit.audit.run import audit as run_audit

    result = run_bulk(run_audit, config, _summarise)
    _summarise(result)
    rows = [p.as_dict() for p in result.pairs]
    if out is not None:
        write_report(out, rows, whole=result.as_dict())
        stderr.print(f"Wrote the report of {len(rows)} pairs to {out}", markup=False)
    if output is RowsFormat.table:
        _render_flagged(result, top)
    else:
        print_rows(output, rows, result.as_dict())
    _write_tables(result, config, write_clean, write_flagged)
    if html_out is not None:
        from clipkit.report.html import write_audit_report

        for path in write_audit_report(result, html_out, top=max(top, 50)):
            stderr.print(f"Wrote {path}", markup=False)
    if fail_on_flags and result.flagged:
        raise typer.Exit(1)


def _write_tables(result: Any, config: Any, clean: Path | None, flagged: Path | None) -> None:
    from clipkit.audit.clean import write_clean, write_flagged

    if clean is not None:
        written = write_clean(result, config, clean)
        kept = (
            f" ({written.unaudited} of them skipped by the audit, kept as they were)"
            if written.unaudited
            else ""
        )
        stderr.print(
            f"Wrote {written.rows} rows without the {len(result.flagged)} flagged to "
            f"{written.path}{kept}",
            markup=False,
            soft_wrap=True,
        )
    if flagged is not None:
        written = write_flagged(result, config, flagged)
        stderr.print(
            f"Wrote {written.rows} flagged rows with suggestions to {written.path}",
            markup=False,
            soft_wrap=True,
        )


def _summarise(result: Any) -> None:
    c = result.calibration
    stderr.print(
        f"Audited {len(result.pairs)} pairs with {result.model} on {result.runtime.runtime} "
        f"({result.runtime.reason}); skipped {len(result.failures)}.",
        markup=False,
    )
    stderr.print(result.headline(), markup=False)
    found = result.retrieval()
    stderr.print(
        "Retrieval over the pairs: "
        + "; ".join(
            f"{arrow} R@1 {found[f'{d}_r1']:.1%}, R@5 {found[f'{d}_r5']:.1%}, "
            f"R@10 {found[f'{d}_r10']:.1%}, mean rank {found[f'{d}_mean_rank']:.1f}"
            for d, arrow in (("image_to_text", "image→text"), ("text_to_image", "text→image"))
        )
        + ".",
        markup=False,
    )
    if result.logit_bias is not None:
        chances = sorted(p.match_probability for p in result.pairs)
        unlikely = sum(chance < 0.5 for chance in chances)
        stderr.print(
            f"Match probability σ(t·cos + b), the SigLIP model's own: median "
            f"{chances[len(chances) // 2]:.3f}; {unlikely} pairs below 0.5.",
            markup=False,
        )
    matched, shuffled = c.quantiles["matched"], c.quantiles["shuffled"]
    stderr.print(
        f"Cosine median: pairs {matched['50%']:.3f}, shuffled {shuffled['50%']:.3f}; "
        f"5–95 %: pairs {matched['5%']:.3f}–{matched['95%']:.3f}, shuffled "
        f"{shuffled['5%']:.3f}–{shuffled['95%']:.3f}.",
        markup=False,
    )
    if result.long_captions:
        stderr.print(
            f"{result.long_captions} captions exceed the model's context "
            f"({result.long_caption_mode}).",
            markup=False,
        )
    if result.duplicate_images or result.duplicate_captions:
        stderr.print(
            f"{len(result.duplicate_images)} identical images carry different captions; "
            f"{len(result.duplicate_captions)} captions are on several different "
            "images (see the report).",
            markup=False,
        )
    print_skipped(result.failures)


def _render_flagged(result: Any, top: int) -> None:
    flagged = result.flagged
    table = Table(
        "probability",
        "mismatch",
        "cosine",
        "rank c/i",
        Column("image", overflow="fold"),
        Column("caption", overflow="fold"),
        Column("suggested caption", overflow="fold"),
        title=f"Flagged pairs ({len(flagged)}), worst first",
        title_justify="left",
    )
    for p in flagged[:top]:
        table.add_row(
            f"{p.probability:.2f}",
            f"{p.mismatch:.3f}",
            f"{p.cosine:.3f}",
            f"{p.caption_rank}/{p.image_rank}",
            path_cell(p.image),
            cell(p.caption),
            cell(p.suggested_caption or "–"),
        )
    stdout.print(table)
    if len(flagged) > top:
        stderr.print(f"{len(flagged) - top} more flagged pairs: see --out or --html.", markup=False)
