"""The ``clipkit`` command line: parse options, call one service, render its result.

Only typer and rich are imported at module level; services (and with them torch, open_clip,
faiss, pyarrow) are imported inside the commands so that ``clipkit --help`` stays instant.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from collections.abc import Callable, Iterator
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from clipkit import __version__
from clipkit.config import DEFAULT_MODEL_SPEC, ENV_DEBUG, ENV_MODEL
from clipkit.errors import ClipkitError, NotImplementedYetError

app = typer.Typer(
    name="clipkit",
    help="Embed, index, search, fine-tune, zero-shot classify and audit with CLIP models.",
    no_args_is_help=True,
    add_completion=False,
    # Rich tracebacks print local variables, which hold tensors and paths: never show them.
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
models_app = typer.Typer(
    help="List model architectures and pretrained weights, or inspect one model.",
    invoke_without_command=True,
)
app.add_typer(models_app, name="models")

stdout = Console(highlight=False, soft_wrap=True)
stderr = Console(stderr=True, highlight=False)

F = TypeVar("F", bound=Callable[..., Any])


class OutputFormat(str, Enum):
    table = "table"
    json = "json"


ModelOption = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        envvar=ENV_MODEL,
        help="Model spec: ARCH[:TAG], ARCH:random, "
        "hf-hub:org/repo, or a checkpoint file or training-run folder.",
    ),
]
DeviceOption = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
FormatOption = Annotated[
    OutputFormat, typer.Option("--format", "-f", help="Output format for stdout.")
]


def handles_errors(command: F) -> F:
    """Map ClipkitError to ``Error:``/``Hint:`` and exit 1; anything else likewise, tersely.

    ``CLIPKIT_DEBUG=1`` re-raises instead, so the plain traceback (no locals) is shown.
    """

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except KeyboardInterrupt:
            stderr.print("Interrupted.")
            raise typer.Exit(130) from None
        except ClipkitError as error:
            if _debug():
                raise
            _print_error(error.message, error.hint)
            raise typer.Exit(1) from None
        except Exception as error:  # a bug, or a failure we did not foresee: still no traceback
            if _debug():
                raise
            _print_error(
                f"Unexpected {type(error).__name__}: {error}",
                f"Re-run with {ENV_DEBUG}=1 to see the traceback, and please report it.",
            )
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _debug() -> bool:
    return os.environ.get(ENV_DEBUG, "").strip().lower() in ("1", "true", "yes")


def _print_error(message: str, hint: str | None) -> None:
    stderr.print(f"[bold red]Error:[/] {message}", markup=True, highlight=False)
    if hint:
        stderr.print(f"[bold]Hint:[/] {hint}", markup=True, highlight=False)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"clipkit {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Show version."),
    ] = False,
) -> None:
    """Embed, index, search, fine-tune, zero-shot classify and audit with CLIP models."""


@models_app.callback()
@handles_errors
def models_list(
    ctx: typer.Context,
    filter: Annotated[
        str | None, typer.Option("--filter", help="Only rows whose name contains this text.")
    ] = None,
    cached: Annotated[
        bool, typer.Option("--cached", help="Only weights in the local cache.")
    ] = False,
    output: FormatOption = OutputFormat.table,
) -> None:
    """List built-in and open_clip architectures with their pretrained tags and cache state."""
    if ctx.invoked_subcommand is not None:
        return
    from clipkit.models import list_models

    rows = list_models(filter, cached_only=cached)
    if output is OutputFormat.json:
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
    device: DeviceOption = "cpu",
    output: FormatOption = OutputFormat.table,
) -> None:
    """Show embedding size, image size, context length, parameters and fingerprint of a model."""
    from clipkit.models import describe_model

    info = describe_model(spec, device=device)
    if output is OutputFormat.json:
        typer.echo(json.dumps(info.as_dict(), indent=2))
        return
    table = Table("field", "value", show_header=False)
    for key, value in info.as_dict().items():
        table.add_row(key, str(value))
    stdout.print(table)


class KindChoice(str, Enum):
    auto = "auto"
    image = "image"
    text = "text"


class StorageDtype(str, Enum):
    float32 = "float32"
    float16 = "float16"


@app.command()
@handles_errors
def embed(
    sources: Annotated[
        list[str],
        typer.Argument(help="Folders, images, .txt files or CSV/TSV/JSONL/Parquet tables."),
    ],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Output embeddings folder.")],
    model: ModelOption = DEFAULT_MODEL_SPEC,
    kind: Annotated[KindChoice, typer.Option(help="Embed only images or only texts.")] = (
        KindChoice.auto
    ),
    batch_size: Annotated[int, typer.Option(min=1, help="Items per model call.")] = 64,
    workers: Annotated[
        int | None, typer.Option(min=0, help="Image decode processes (default: one per core).")
    ] = None,
    device: DeviceOption = "auto",
    dtype: Annotated[StorageDtype, typer.Option(help="Stored embedding precision.")] = (
        StorageDtype.float32
    ),
    lines: Annotated[bool, typer.Option(help="A .txt SOURCE holds one text per line.")] = False,
    include_hidden: Annotated[bool, typer.Option(help="Also embed hidden files.")] = False,
    image_column: Annotated[str | None, typer.Option(help="Table column of image paths.")] = None,
    text_column: Annotated[str | None, typer.Option(help="Table column of texts.")] = None,
    max_pixels: Annotated[
        int, typer.Option(min=1, help="Skip images larger than this (decompression bombs).")
    ] = 89_478_485,
    shard_rows: Annotated[int, typer.Option(min=1, help="Rows per Parquet shard.")] = 50_000,
    strict: Annotated[bool, typer.Option(help="Exit 1 if any input was skipped.")] = False,
) -> None:
    """Encode image and text folders or tables to Parquet embeddings (resumable).

    Example: clipkit embed photos/ captions.csv -o emb/ -m clipkit-tiny:random
    """
    from clipkit.embed import EmbedConfig
    from clipkit.embed import embed as run_embed
    from clipkit.sources import Kind

    config = EmbedConfig(
        sources=tuple(sources),
        out_dir=out_dir,
        model=model,
        kind=Kind(kind.value),
        batch_size=batch_size,
        workers=workers,
        device=device,
        float16=dtype is StorageDtype.float16,
        strict=strict,
        lines=lines,
        include_hidden=include_hidden,
        image_column=image_column,
        text_column=text_column,
        max_pixels=max_pixels,
        shard_rows=shard_rows,
    )
    with _progress() as update:
        result = run_embed(config, progress=update)
    if not result.is_main:  # another rank of a torchrun job: rank 0 reports for all
        return
    for uri, stage, error in result.failures[:10]:
        stderr.print(f"  skipped {uri} ({stage}: {error})", markup=False)
    if result.skipped > 10:
        stderr.print(f"  ... and {result.skipped - 10} more, listed in {out_dir}/_failures.parquet")
    notes = []
    if result.truncated_texts:
        notes.append(f"{result.truncated_texts} texts truncated to the model's context")
    if result.replaced_texts:
        notes.append(f"{result.replaced_texts} texts had invalid UTF-8 replaced")
    if result.aliases:
        notes.append(f"{result.aliases} duplicates recorded in _aliases.parquet")
    stderr.print(
        f"Embedded {result.embedded}, skipped {result.skipped}, already present "
        f"{result.already_present} in {result.seconds:.1f} s "
        f"({result.items_per_second:.1f} items/s) -> {out_dir}"
        + (f"; {'; '.join(notes)}" if notes else ""),
        markup=False,
    )
    if strict and result.skipped:
        raise typer.Exit(1)


@contextlib.contextmanager
def _progress() -> Iterator[Callable[[str, int, int], None]]:
    """A rich progress bar on stderr, driven by a service's (stage, done, total) callback."""
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
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
    )
    tasks: dict[str, Any] = {}
    started: dict[str, float] = {}
    with Progress(*columns, console=stderr, transient=False) as bar:

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total, rate="")
                started[stage] = time.perf_counter()
            elapsed = max(time.perf_counter() - started[stage], 1e-9)
            bar.update(tasks[stage], completed=done, rate=f"{done / elapsed:.1f}/s")

        yield update


def _planned(name: str, issue: int) -> Callable[..., None]:
    """A command that exists in the interface but is not built yet: it says so and exits 1."""

    @handles_errors
    def command(ctx: typer.Context) -> None:
        raise NotImplementedYetError(
            f"`clipkit {name}` is not implemented yet (planned in issue #{issue}).",
            "See README.md for the commands that work today.",
        )

    command.__doc__ = f"[not implemented yet: issue #{issue}] {_PLANNED_HELP[name]}"
    return command


_PLANNED_HELP = {
    "index": "Build a FAISS index from an embeddings folder.",
    "search": "Search an index or embeddings folder by text or image.",
    "train": "Fine-tune a CLIP model with the bidirectional contrastive loss.",
    "zeroshot": "Zero-shot classify images with prompt templates.",
    "audit": "Find mismatched image-caption pairs.",
    "quickstart": "Generate example data and run every step offline.",
}
_PLANNED_ISSUE = {
    "index": 5,
    "search": 5,
    "train": 6,
    "zeroshot": 7,
    "audit": 8,
    "quickstart": 9,
}
for _name, _issue in _PLANNED_ISSUE.items():
    app.command(
        _name,
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )(_planned(_name, _issue))


def main() -> None:
    """Console-script entry point."""
    app()
