"""``clipkit zeroshot``: classify images with prompt templates, with metrics and open-set."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Column, Table
from rich.text import Text

from clipkit.cli.app import app, exit_quickly_when_done, handles_errors
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
    typed_text,
)
from clipkit.cli.render import cell, path_cell, print_rows, print_skipped, run_bulk
from clipkit.cli.settings import fallback_model
from clipkit.infra.atomic import check_output

CONFUSION_TABLE_MAX = 20  # larger matrices are shown as a list of the worst confusions


@app.command()
@handles_errors
def zeroshot(
    images: Annotated[
        Path, typer.Argument(help="Image folder, class-per-subfolder tree, or embeddings folder.")
    ],
    labels: Annotated[
        str | None, typer.Option(help='Comma-separated labels, e.g. "cat,dog,car".')
    ] = None,
    class_tree: Annotated[
        bool,
        typer.Option(
            "--class-tree/--no-class-tree",
            help="Each subfolder of IMAGES is a class: labels and ground truth from the folders.",
        ),
    ] = False,
    labels_file: Annotated[
        Path | None,
        typer.Option(help="One label per line, or `label: prompt one | prompt two`."),
    ] = None,
    templates: Annotated[
        str, typer.Option(help="simple, openai (the CLIP paper's 80), or a file of {} lines.")
    ] = "simple",
    model: RecordedModelOption = None,
    k: Annotated[int, typer.Option("-k", min=1, help="Labels shown per image.")] = 5,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help=f"Predictions file: {ROWS_FILE}."),
    ] = None,
    output: RowsFormatOption = RowsFormat.table,
    show_rows: Annotated[
        bool,
        typer.Option(
            "--show-rows/--no-show-rows", help="Print each image's labels in the table too."
        ),
    ] = False,
    html_out: Annotated[
        Path | None, typer.Option("--html", help="HTML report (+ confusion PNG beside it).")
    ] = None,
    reject_threshold: Annotated[
        float | None, typer.Option(help="Top probability below this -> 'unknown'.")
    ] = None,
    calibrate: Annotated[
        Path | None, typer.Option(help="Known images: set the threshold from them.")
    ] = None,
    false_reject: Annotated[
        float, typer.Option(help="With --calibrate: share of known images to reject.")
    ] = 0.05,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per model call.")] = 64,
    workers: WorkersOption = None,
    device: DeviceOption = "auto",
    include_hidden: IncludeHiddenOption = False,
    strict: StrictOption = False,
    runtime: RuntimeOption = "auto",
) -> None:
    """Label images by prompts; metrics when labels are known.

    Example: clipkit zeroshot photos/ --labels "cat,dog,car" --templates openai -k 3

    A folder of class subfolders (val/cat/*.jpg, val/dog/*.jpg) is scored against them with
    --class-tree: clipkit zeroshot val/ --class-tree --html report.html
    """
    from clipkit.store.reports import report_format
    from clipkit.zeroshot.run import (
        ZeroShotConfig,
        prediction_rows,
        write_predictions,
    )
    from clipkit.zeroshot.run import zeroshot as run_zeroshot

    if out is not None:
        report_format(out)  # fail before any work on a suffix we cannot write
    for path in (out, html_out):
        if path is not None:
            check_output(path)  # before the work, not after it
    config = ZeroShotConfig(
        images=images,
        class_tree=class_tree,
        labels=typed_text(labels),
        labels_file=labels_file,
        templates=templates,
        model=model,
        default_model=fallback_model(None).value,
        k=k,
        reject_threshold=reject_threshold,
        calibrate=calibrate,
        false_reject=false_reject,
        batch_size=batch_size,
        workers=workers,
        device=device,
        include_hidden=include_hidden,
        strict=strict,
        runtime=runtime,
    )
    result = run_bulk(run_zeroshot, config, _summarise)
    _summarise(result)
    if output is RowsFormat.table:
        _render_tables(result, show_predictions=show_rows)
        if not show_rows and out is None:
            stderr.print("Each image's labels: --show-rows, or --out predictions.csv.")
    else:
        print_rows(output, prediction_rows(result), result.as_dict())
    for path in [write_predictions(result, out)] if out is not None else []:
        stderr.print(f"Wrote {len(result.predictions)} predictions to {path}", markup=False)
    if html_out is not None:
        from clipkit.report.html import write_zeroshot_report

        for path in write_zeroshot_report(result, html_out):
            stderr.print(f"Wrote {path}", markup=False)
    if result.runtime.runtime == "onnx":
        exit_quickly_when_done()  # everything is written; skip the teardown of a fast run


def _summarise(result: Any) -> None:
    """Diagnostics on stderr: what ran, what was skipped, what was rejected, the headline."""
    stderr.print(
        f"Classified {len(result.predictions)} images ({result.input_kind}) into "
        f"{len(result.labels)} labels with {result.prompts} prompts ({result.templates} "
        f"templates), model {result.model} on {result.runtime.runtime} "
        f"({result.runtime.reason}); skipped {len(result.failures)}.",
        markup=False,
    )
    if result.logit_bias is not None:
        stderr.print(f"Probabilities: {result.probabilities}.", markup=False)
    print_skipped(result.failures)
    if (r := result.rejection) is not None:
        how = (
            "given"
            if r.method == "given"
            else (
                f"calibrated on {r.calibration_images} known images for "
                f"{r.target_false_reject:.1%} false rejects, "
                f"realised {r.calibration_false_reject:.1%}"
            )
        )
        stderr.print(
            f"{r.rejected} images are unknown: top probability below {r.threshold:.4f} ({how}).",
            markup=False,
        )
    for note in result.notes:
        stderr.print(note, markup=False)
    if (m := result.metrics) is not None:
        headline = (
            f"top-1 {m.top1:.1%} · top-{m.k} {m.topk:.1%} · mean per-class recall "
            f"{m.mean_per_class_recall:.1%} on {m.images} images"
        )
        stderr.print(headline, markup=False)


def _render_tables(result: Any, *, show_predictions: bool) -> None:
    if show_predictions:
        image = Column("image", overflow="fold")
        table = Table(
            image, "label", "probability", "top labels", title="Predictions", title_justify="left"
        )
        for p in result.predictions:
            others = ", ".join(f"{label} {prob:.3f}" for label, prob in p.top)
            table.add_row(
                path_cell(p.path or p.uri), cell(p.label), f"{p.confidence:.3f}", cell(others)
            )
        stdout.print(table)
    total = max(len(result.predictions), 1)
    table = Table("label", "images", "share", title="Label distribution", title_justify="left")
    for label, count in result.distribution:
        table.add_row(Text(label), str(count), f"{count / total:.1%}")
    stdout.print(table)
    if result.metrics is not None:
        _render_metrics(result)


def _render_metrics(result: Any) -> None:
    m = result.metrics
    table = Table(
        "label",
        "images",
        "predicted",
        "precision",
        "recall",
        title="Per class",
        title_justify="left",
    )
    for c in m.classes:
        table.add_row(
            Text(c.label), str(c.support), str(c.predicted), _cell(c.precision), _cell(c.recall)
        )
    stdout.print(table)
    labels = result.labels
    if len(labels) <= CONFUSION_TABLE_MAX:
        table = Table(
            "true \\ predicted",
            *(Column(header=Text(label)) for label in labels),
            title="Confusion matrix",
            title_justify="left",
        )
        for label, row in zip(labels, m.confusion, strict=True):
            table.add_row(Text(label), *(str(count) if count else "·" for count in row))
    else:
        table = Table("true", "predicted", "images", title="Worst confusions", title_justify="left")
        for true, predicted, count in m.worst_confusions(CONFUSION_TABLE_MAX):
            table.add_row(Text(labels[true]), Text(labels[predicted]), str(count))
    stdout.print(table)
    stdout.print(
        f"top-1 {m.top1:.4f}  top-{m.k} {m.topk:.4f}  "
        f"mean per-class recall {m.mean_per_class_recall:.4f}"
    )


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"
