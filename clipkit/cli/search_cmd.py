"""``clipkit search``: text and image queries against an index or an embeddings folder."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Column, Table
from rich.text import Text

from clipkit.cli.app import app, exit_quickly_when_done, handles_errors
from clipkit.cli.console import stderr, stdout
from clipkit.cli.options import (
    DeviceOption,
    RecordedModelOption,
    RowsFormat,
    RowsFormatOption,
    RuntimeOption,
    SearchKind,
    typed_text,
)
from clipkit.cli.render import cell, path_cell, print_rows, print_skipped, progress_bar
from clipkit.cli.settings import Setting, fallback_model
from clipkit.errors import ClipkitError
from clipkit.infra.atomic import check_output


@app.command()
@handles_errors
def search(
    query: Annotated[str | None, typer.Argument(help="Text query.")] = None,
    folder: Annotated[
        Path | None,
        typer.Option(
            "--in",
            metavar="FOLDER",
            help="Search the images of a folder: embedded and indexed in your cache on first "
            "use, brought up to date before each search.",
        ),
    ] = None,
    index_dir: Annotated[Path | None, typer.Option("--index", help="Index folder.")] = None,
    embeddings: Annotated[
        Path | None, typer.Option(help="Search an embeddings folder exactly (no index).")
    ] = None,
    k: Annotated[int, typer.Option("-k", min=1, help="Results per query.")] = 10,
    image: Annotated[list[Path] | None, typer.Option(help="Query image (repeatable).")] = None,
    weights: Annotated[
        str | None, typer.Option(help="Comma-separated weights: text first, then images.")
    ] = None,
    queries: Annotated[
        Path | None, typer.Option(help="File with one text query per line (batch mode).")
    ] = None,
    kind: Annotated[
        SearchKind,
        typer.Option(
            help="With --embeddings: the rows to search (auto: images if any, else texts; "
            "all: both). An index holds one kind."
        ),
    ] = SearchKind.auto,
    output: RowsFormatOption = RowsFormat.table,
    html_out: Annotated[Path | None, typer.Option("--html", help="Write a gallery page.")] = None,
    model: RecordedModelOption = None,
    device: DeviceOption = "auto",
    runtime: RuntimeOption = "auto",
) -> None:
    """Search a folder, an index or embeddings by text or image.

    Example: clipkit search "a photo of a dog" --in photos/ -k 5
    """
    from clipkit.search.run import SearchConfig
    from clipkit.search.run import search as run_search

    if html_out is not None:
        check_output(html_out)
    query = typed_text(query)
    # --in: the model given, else the settings file's, else the built-in default
    model_setting = fallback_model(model)
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
        folder=folder,
        default_model=model_setting.value,
        kind=None if kind is SearchKind.auto else kind.value,
        k=k,
        model=model,
        device=device,
        runtime=runtime,
    )
    started = time.perf_counter()
    with progress_bar() as progress:  # drawn only when a folder's cache has work to do
        result = run_search(config, progress)
    if result.refresh is not None:
        _report_refresh(result.refresh, model_setting)
    _render_search(result, output)
    hits = sum(len(q.hits) for q in result.results)
    stderr.print(
        f"{hits} {result.kind} hits for {len(result.results)} queries from {result.source} with "
        f"{result.model} on {result.runtime.runtime} ({result.runtime.reason}) in "
        f"{time.perf_counter() - started:.2f} s",
        markup=False,
    )
    if html_out is not None:
        from clipkit.report.html import write_search_gallery

        write_search_gallery(result, html_out)
        stderr.print(f"Wrote {html_out}", markup=False)
    exit_quickly_when_done()


def _report_refresh(refresh: Any, model: Setting) -> None:
    """What bringing the folder's cache up to date did: nothing is said when nothing changed."""
    if not refresh.updated:
        return
    from clipkit.store import FAILURES_FILE

    print_skipped(refresh.failures, str(refresh.cache.emb_dir / FAILURES_FILE))
    stderr.print(
        f"Indexed {refresh.cache.folder} with {model.described('model')}: {refresh.embedded} "
        f"images embedded, {refresh.pruned} rows of gone or edited images dropped, "
        f"{len(refresh.failures)} skipped (cache: {refresh.cache.root}). "
        + refresh.export_note[0].upper()
        + refresh.export_note[1:]
        + ".",
        markup=False,
        soft_wrap=True,
    )


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


def _render_search(result: Any, output: RowsFormat) -> None:
    rows = [{"query": q.query, **hit.as_dict()} for q in result.results for hit in q.hits]
    meta_names = list(dict.fromkeys(name for row in rows for name in row["meta"]))
    if output is RowsFormat.json:
        payload = [
            {"query": q.query, "hits": [h.as_dict() for h in q.hits]} for q in result.results
        ]
        print_rows(output, rows, payload)
    elif output is RowsFormat.jsonl:
        print_rows(output, rows)
    elif output is RowsFormat.csv:
        # Flat columns: a pass-through column named like one of ours ("rank", say) gets a prefix.
        ours = ["query", "rank", "score", "id", "uri", "kind", "text", "path"]
        columns = {name: f"meta.{name}" if name in ours else name for name in meta_names}
        flat = [
            {
                **{key: row[key] for key in ours},
                **{columns[name]: value for name, value in row["meta"].items()},
            }
            for row in rows
        ]
        print_rows(output, flat)
    else:
        for q in result.results:
            # A path is folded onto more lines, never cut: it is what the user opens next.
            shown_column = Column("path or text", overflow="fold")
            headers: list[str | Column] = ["rank", "score", shown_column]
            headers += ["metadata"] if meta_names else []
            table = Table(*headers, title=Text(q.query), title_justify="left")
            for hit in q.hits:
                shown = cell(hit.text) if hit.kind == "text" else path_cell(hit.path)
                meta = [cell("; ".join(f"{k}: {v}" for k, v in hit.meta.items()))]
                table.add_row(
                    str(hit.rank), f"{hit.score:.4f}", shown, *(meta if meta_names else [])
                )
            stdout.print(table)
