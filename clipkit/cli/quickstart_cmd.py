"""``clipkit quickstart``: generated data through every command, offline, in a few minutes."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from clipkit.cli.app import app, handles_errors
from clipkit.cli.console import stderr, stdout
from clipkit.cli.options import (
    DeviceOption,
    DocumentFormat,
    DocumentFormatOption,
    WorkersOption,
)
from clipkit.cli.render import progress_bar


@app.command()
@handles_errors
def quickstart(
    folder: Annotated[
        Path, typer.Argument(help="Working folder (created; re-running reuses it).")
    ] = Path("clipkit-quickstart"),
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs.")] = 12,
    train_pairs: Annotated[int, typer.Option(min=8, help="Generated training pairs.")] = 1000,
    val_pairs: Annotated[int, typer.Option(min=20, help="Generated validation pairs.")] = 200,
    per_class: Annotated[
        int, typer.Option(min=1, help="Images per colour in the zero-shot tree.")
    ] = 12,
    workers: WorkersOption = None,
    device: DeviceOption = "auto",
    output: DocumentFormatOption = DocumentFormat.table,
) -> None:
    """Every command end to end on generated data, offline.

    Generates captioned shapes, trains a built-in model, then runs every other command on them.

    Example: clipkit quickstart demo/ && open demo/reports/index.html
    """
    from clipkit.quickstart.run import QuickstartConfig
    from clipkit.quickstart.run import quickstart as run_quickstart

    config = QuickstartConfig(
        folder=folder,
        train_pairs=train_pairs,
        val_pairs=val_pairs,
        per_class=per_class,
        epochs=epochs,
        workers=workers,
        device=device,
    )
    stderr.print(
        f"clipkit quickstart in {folder}: train, embed, index, search, zeroshot, audit",
        markup=False,
    )
    with progress_bar() as progress:
        result = run_quickstart(config, progress, on_step=_announce)
    if output is DocumentFormat.json:
        typer.echo(
            json.dumps(
                {
                    "folder": result.folder,
                    "overview": result.overview,
                    "seconds": result.seconds,
                    "steps": [step.as_dict() for step in result.steps],
                },
                indent=2,
                ensure_ascii=False,
            )
        )
        return
    table = Table("step", "result", "seconds")
    for step in result.steps:
        name = step.name + (" (reused)" if step.reused else "")
        table.add_row(name, Text(step.summary), f"{step.seconds:.1f}")
    stdout.print(table)
    reports = [a for step in result.steps for a in step.artifacts if a.endswith(".html")]
    stdout.print("Reports: " + ", ".join(reports), markup=False)
    stdout.print(f"Done in {result.seconds:.0f} s. Open {result.overview}", markup=False)
    index = shlex.quote(str(Path(result.folder) / "index"))
    stdout.print(f"Search it in your browser: clipkit serve --index {index}", markup=False)


def _announce(step: Any) -> None:
    reused = " (reused)" if step.reused else ""
    stderr.print(f"✓ {step.name}{reused} in {step.seconds:.1f} s: {step.summary}", markup=False)
