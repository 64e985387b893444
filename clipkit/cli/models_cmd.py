"""``clipkit models``: list architectures and pretrained weights; inspect one model."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from clipkit.cli.app import handles_errors, models_app
from clipkit.cli.console import stderr, stdout
from clipkit.cli.options import DocumentFormat, DocumentFormatOption


@models_app.callback()
@handles_errors
def models_list(
    ctx: typer.Context,
    filter: Annotated[
        str | None, typer.Option("--filter", help="Only rows whose name contains this text.")
    ] = None,
    cached: Annotated[
        bool, typer.Option("--cached/--all", help="Only weights in the local cache.")
    ] = False,
    output: DocumentFormatOption = DocumentFormat.table,
) -> None:
    """List built-in and open_clip architectures with their pretrained tags and cache state."""
    if ctx.invoked_subcommand is not None:
        return
    from clipkit.models.openclip import list_models

    rows = list_models(filter, cached_only=cached)
    if output is DocumentFormat.json:
        typer.echo(json.dumps([row.as_dict() for row in rows], indent=2))
        return
    table = Table("spec", "source", "cached")
    for row in rows:
        table.add_row(row.spec, row.source, "yes" if row.cached else "")
    stdout.print(table)
    stderr.print(f"{len(rows)} models. Inspect one with: clipkit models info SPEC")


@models_app.command("info")
@handles_errors
def models_info(
    spec: Annotated[str, typer.Argument(help="Model spec to inspect.")],
    device: Annotated[
        str | None,
        typer.Option(metavar="DEVICE", help="auto, cpu, cuda, cuda:N or mps.", show_default="cpu"),
    ] = None,
    output: DocumentFormatOption = DocumentFormat.table,
) -> None:
    """Show embedding size, image size, context length, parameters and fingerprint of a model."""
    from clipkit.models.openclip import describe_model

    info = describe_model(spec, device=device)
    if output is DocumentFormat.json:
        typer.echo(json.dumps(info.as_dict(), indent=2))
        return
    table = Table("field", "value", show_header=False)
    for key, value in info.as_dict().items():
        table.add_row(key, str(value))
    stdout.print(table)
