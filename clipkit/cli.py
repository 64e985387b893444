"""The ``clipkit`` command line: parse options, call one service, render its result.

Only typer and rich are imported at module level; services (and with them torch, open_clip,
faiss, pyarrow) are imported inside the commands so that ``clipkit --help`` stays instant.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
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
        except (typer.Exit, typer.Abort, typer.BadParameter):
            raise  # normal exits, and usage errors that Click reports with exit code 2
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


class IndexType(str, Enum):
    auto = "auto"
    flat = "flat"
    hnsw = "hnsw"
    ivf = "ivf"
    ivfpq = "ivfpq"


class IndexKind(str, Enum):
    auto = "auto"
    image = "image"
    text = "text"


@app.command()
@handles_errors
def index(
    emb_dir: Annotated[Path, typer.Argument(help="Embeddings folder made by clipkit embed.")],
    out_dir: Annotated[
        Path | None, typer.Option("--out", "-o", help="Index folder (default: EMB_DIR/index).")
    ] = None,
    kind: Annotated[
        IndexKind, typer.Option(help="Rows to index (auto: images if any, else texts).")
    ] = IndexKind.auto,
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
) -> None:
    """Build a FAISS index (exact or approximate) with measured recall@10.

    Example: clipkit index emb/ -o emb-index/
    """
    from clipkit.index import IndexConfig, build_index

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
    stderr.print("Building index…" if not update else "Updating index…")
    result = build_index(config)
    info = result.info
    recall = ", ".join(f"{k} {v:.3f}" for k, v in info.recall_at_10.items() if v is not None)
    params = ", ".join(f"{k}={v}" for k, v in info.params.items()) or "exact"
    stderr.print(
        f"Index {info.factory} ({params}) of {info.rows} {info.kind} rows -> {result.out_dir}; "
        f"recall@10: {recall or 'n/a'}; added {result.added}"
        + (
            f", {result.removed} rows no longer in {emb_dir} (rebuild to drop them)"
            if result.removed
            else ""
        ),  # fmt: skip
        markup=False,
    )


def _parse_size(text: str) -> int:
    """'512MB', '4G', '1.5GiB' or a byte count -> bytes (binary multiples)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)I?B?\s*", text.upper())
    if not match:
        raise typer.BadParameter(f"{text!r} is not a size like 512MB or 4GB.")
    number, unit = match.groups()
    return int(float(number) * 1024 ** " KMGT".index(unit or " "))


class SearchFormat(str, Enum):
    table = "table"
    json = "json"
    jsonl = "jsonl"
    csv = "csv"


@app.command()
@handles_errors
def search(
    query: Annotated[str | None, typer.Argument(help="Text query.")] = None,
    index_dir: Annotated[Path | None, typer.Option("--index", help="Index folder.")] = None,
    embeddings: Annotated[
        Path | None, typer.Option(help="Search an embeddings folder exactly (no index).")
    ] = None,
    k: Annotated[int, typer.Option("-k", help="Results per query.")] = 10,
    image: Annotated[list[Path] | None, typer.Option(help="Query image (repeatable).")] = None,
    weights: Annotated[
        str | None, typer.Option(help="Comma-separated weights: text first, then images.")
    ] = None,
    queries: Annotated[
        Path | None, typer.Option(help="File with one text query per line (batch mode).")
    ] = None,
    kind: Annotated[
        KindChoice, typer.Option(help="With --embeddings: search only images or texts.")
    ] = KindChoice.auto,
    output: Annotated[SearchFormat, typer.Option("--format", "-f", help="stdout format.")] = (
        SearchFormat.table
    ),
    html_out: Annotated[Path | None, typer.Option("--html", help="Write a gallery page.")] = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Model (default: the one recorded).")
    ] = None,
    device: DeviceOption = "auto",
) -> None:
    """Search an index or embeddings folder by text and/or image.

    Example: clipkit search "a photo of a dog" --index emb-index/ -k 5
    """
    from clipkit.search import SearchConfig
    from clipkit.search import search as run_search

    texts = [query] if query is not None else []
    if queries is not None:
        if query is not None:
            raise typer.BadParameter("Give QUERY or --queries, not both.")
        texts = _read_queries(queries)
    config = SearchConfig(
        texts=tuple(texts),
        images=tuple(image or ()),
        weights=_parse_weights(weights),
        batch=queries is not None,
        index_dir=index_dir,
        embeddings_dir=embeddings,
        kind=None if kind is KindChoice.auto else kind.value,
        k=k,
        model=model,
        device=device,
    )
    result = run_search(config)
    _render_search(result, output)
    if html_out is not None:
        from clipkit.report import write_search_gallery

        write_search_gallery(result, html_out)
        stderr.print(f"Wrote {html_out}", markup=False)


def _read_queries(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as error:
        raise ClipkitError(f"Cannot read {path}: {error.strerror}.", "Check the path.") from None
    texts = [line.strip() for line in lines if line.strip()]
    if not texts:
        raise ClipkitError(f"{path} holds no queries.", "Write one query per line.")
    return texts


def _parse_weights(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a comma-separated list of numbers.") from None


def _render_search(result: Any, output: SearchFormat) -> None:
    rows = [{"query": q.query, **hit.as_dict()} for q in result.results for hit in q.hits]
    if output is SearchFormat.json:
        payload = [{"query": q.query, "hits": [h.as_dict() for h in q.hits]}
                   for q in result.results]  # fmt: skip
        typer.echo(json.dumps(payload, indent=2, ensure_ascii=False))
    elif output is SearchFormat.jsonl:
        for row in rows:
            typer.echo(json.dumps(row, ensure_ascii=False))
    elif output is SearchFormat.csv:
        import csv
        import sys

        fields = ["query", "rank", "score", "id", "uri", "kind", "text"]
        writer = csv.DictWriter(sys.stdout, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    else:
        for q in result.results:
            table = Table("rank", "score", "uri or text", title=q.query, title_justify="left")
            for hit in q.hits:
                table.add_row(str(hit.rank), f"{hit.score:.4f}",
                              hit.text if hit.kind == "text" else hit.uri)  # fmt: skip
            stdout.print(table)


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
    "train": "Fine-tune a CLIP model with the bidirectional contrastive loss.",
    "zeroshot": "Zero-shot classify images with prompt templates.",
    "audit": "Find mismatched image-caption pairs.",
    "quickstart": "Generate example data and run every step offline.",
}
_PLANNED_ISSUE = {
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
