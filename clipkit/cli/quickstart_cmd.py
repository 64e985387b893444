"""``clipkit quickstart``: generated data through every command, offline, in a few minutes."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from clipkit.cli import DeviceOption, _progress, app, handles_errors, stderr, stdout


class QuickstartFormat(str, Enum):
    table = "table"
    json = "json"


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
    workers: Annotated[int, typer.Option(min=0, help="Image decode processes.")] = 2,
    device: DeviceOption = "auto",
    output: Annotated[
        QuickstartFormat, typer.Option("--format", "-f", help="stdout format.")
    ] = QuickstartFormat.table,
) -> None:
    """Every command end to end on generated data, offline, with HTML reports.

    Generates captioned shapes, trains a built-in model, then runs every other command on them.

    Example: clipkit quickstart demo/ && open demo/reports/index.html
    """
    from clipkit.quickstart.run import QuickstartConfig
    from clipkit.quickstart.run import quickstart as run_quickstart

    config = QuickstartConfig(folder=folder, train_pairs=train_pairs, val_pairs=val_pairs,
                              per_class=per_class, epochs=epochs, workers=workers,
                              device=device)  # fmt: skip
    stderr.print(f"clipkit quickstart in {folder}: train, embed, index, search, zeroshot, audit",
                 markup=False)  # fmt: skip
    with _progress() as progress:
        result = run_quickstart(config, progress, on_step=_announce)
    if output is QuickstartFormat.json:
        typer.echo(json.dumps({"folder": result.folder, "overview": result.overview,
                               "seconds": result.seconds,
                               "steps": [step.as_dict() for step in result.steps]},
                              indent=2, ensure_ascii=False))  # fmt: skip
        return
    table = Table("step", "result", "seconds")
    for step in result.steps:
        name = step.name + (" (reused)" if step.reused else "")
        table.add_row(name, Text(step.summary), f"{step.seconds:.1f}")
    stdout.print(table)
    reports = [a for step in result.steps for a in step.artifacts if a.endswith(".html")]
    stdout.print("Reports: " + ", ".join(reports), markup=False)
    stdout.print(f"Done in {result.seconds:.0f} s. Open {result.overview}", markup=False)


def _announce(step: Any) -> None:
    reused = " (reused)" if step.reused else ""
    stderr.print(f"✓ {step.name}{reused} in {step.seconds:.1f} s: {step.summary}", markup=False)
