"""Renderers every command shares: the progress bar, the skipped-input list, and rows as JSON,
JSON lines or CSV on stdout."""

from __future__ import annotations

import contextlib
import csv
import json
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import typer
from rich.text import Text

from clipkit.cli.console import stderr
from clipkit.cli.options import RowsFormat
from clipkit.errors import SkippedInputsError
from clipkit.infra.progress import ProgressCallback, ProgressReport
from clipkit.infra.shown import clipped, printable

SKIPPED_SHOWN = 20
# Characters of a text shown in a table cell; files (--out, --html) keep the whole text.
CELL_CHARS = 300
# How each figure a service reports is shown beside its bar; others as "name value".
FIGURE_FORMATS = {
    "epoch": "epoch {:.0f}",
    "loss": "loss {:.3f}",
    "temperature": "t {:.4f}",
    "samples_per_s": "{:.1f} samples/s",
    "val_loss": "val loss {:.3f}",
    "val_recall": "recall {:.1%}",
}


def cell(text: str | None) -> Text:
    """A text for a table cell: control characters shown as codes, cut at CELL_CHARS."""
    return Text(clipped(text or "", CELL_CHARS))


def path_cell(path: str) -> Text:
    """A path for a table cell: control characters shown as codes, never cut (it is what
    the user opens next)."""
    return Text(printable(path))


def print_skipped(failures: Sequence[tuple[str, str, str]], listed_in: str | None = None) -> None:
    """The first skipped inputs (uri, stage, error) on stderr, then how many more and where."""
    for uri, stage, error in failures[:SKIPPED_SHOWN]:
        # soft_wrap: a long path is wrapped by the terminal, not split by a newline of ours
        stderr.print(f"  skipped {uri}: {stage}: {error}", markup=False, soft_wrap=True)
    if len(failures) > SKIPPED_SHOWN:
        where = f", listed in {listed_in}" if listed_in else ""
        stderr.print(f"  … and {len(failures) - SKIPPED_SHOWN} more{where}", markup=False)


def figures_text(figures: Mapping[str, float]) -> str:
    return "  ".join(
        FIGURE_FORMATS[name].format(value) if name in FIGURE_FORMATS else f"{name} {value:.4g}"
        for name, value in figures.items()
    )


@contextlib.contextmanager
def progress_bar() -> Iterator[ProgressCallback]:
    """A rich progress bar on stderr per stage, fed by a service's progress reports: the
    service's figures beside it where it reports any, else the rate."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[figures]}"),
        TimeRemainingColumn(),
    )
    tasks: dict[str, Any] = {}
    started: dict[str, float] = {}
    # A service reports a stage first when its first batch is done: the stage began when the
    # previous report came (or the bar opened), not then, or the rate would be near infinite.
    last_report = [time.perf_counter()]
    # Drawn from the first report on: a run with no work (a search whose folder is up to
    # date, an embed of what is already embedded) shows no bar at all.
    bar = Progress(*columns, console=stderr, transient=False)
    shown = [False]
    try:

        def update(report: ProgressReport) -> None:
            if not shown[0]:
                bar.start()
                shown[0] = True
            if report.note:
                bar.console.print(f"Note: {report.note}", markup=False)
                return
            now = time.perf_counter()
            if report.stage not in tasks:
                tasks[report.stage] = bar.add_task(report.stage, total=report.total, figures="")
                started[report.stage] = last_report[0]
            last_report[0] = now
            if report.figures:
                text = figures_text(report.figures)
            else:
                text = f"{report.done / max(now - started[report.stage], 1e-9):.1f}/s"
            bar.update(tasks[report.stage], completed=report.done, total=report.total, figures=text)

        yield update
    finally:
        if shown[0]:
            bar.stop()


def run_bulk(
    service: Callable[[Any, ProgressCallback], Any], config: Any, report: Callable[[Any], None]
) -> Any:
    """Run a bulk service under a progress bar and return its result.

    Under ``--strict`` a service that skipped inputs raises once its work is saved; ``report``
    then draws the result it carries (the skipped list, the summary), as without ``--strict``,
    before the error goes to ``handles_errors`` (exit 1).
    """
    with progress_bar() as progress:
        try:
            return service(config, progress)
        except SkippedInputsError as error:
            report(error.result)
            raise


def print_rows(output: RowsFormat, rows: Sequence[Mapping[str, Any]], document: Any = None) -> None:
    """Rows on stdout as JSON (``document`` when given, else the list), JSON lines or CSV.

    CSV columns are the union of the rows' keys, in first-seen order.
    """
    if output is RowsFormat.json:
        payload = list(rows) if document is None else document
        typer.echo(json.dumps(payload, indent=2, ensure_ascii=False))
    elif output is RowsFormat.jsonl:
        for row in rows:
            typer.echo(json.dumps(row, ensure_ascii=False))
    elif output is RowsFormat.csv:
        fields = list(dict.fromkeys(key for row in rows for key in row))
        writer = csv.DictWriter(sys.stdout, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    else:
        raise ValueError(f"{output} is drawn as a table by its command")
