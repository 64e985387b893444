"""``clipkit index`` and ``clipkit search``."""

from __future__ import annotations

import json
import re
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Column, Table
from rich.text import Text

from clipkit.cli import (
    DeviceOption,
    KindChoice,
    app,
    handles_errors,
    stderr,
    stdout,
    typed_text,
)
from clipkit.errors import ClipkitError
from clipkit.infra.atomic import check_output


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
    from clipkit.index.build import IndexConfig, build_index

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
        + (f", dropped {result.dropped} rows no longer in {emb_dir}" if result.dropped else "")
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
    from clipkit.search.run import SearchConfig
    from clipkit.search.run import search as run_search

    if html_out is not None:
        check_output(html_out)
    query = typed_text(query)
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
        from clipkit.report.html import write_search_gallery

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
    meta_names = list(dict.fromkeys(name for row in rows for name in row["meta"]))
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

        fields = ["query", "rank", "score", "id", "uri", "kind", "text", "path"]
        # A pass-through column named like one of ours ("rank", say) gets a prefix.
        columns = {name: f"meta.{name}" if name in fields else name for name in meta_names}
        writer = csv.DictWriter(sys.stdout, fieldnames=fields + list(columns.values()),
                                lineterminator="\n")  # fmt: skip
        writer.writeheader()
        for row in rows:
            meta = row.pop("meta")
            writer.writerow({**row, **{columns[name]: value for name, value in meta.items()}})
    else:
        for q in result.results:
            # A path is folded onto more lines, never cut: it is what the user opens next.
            shown_column = Column("path or text", overflow="fold")
            headers = ["rank", "score", shown_column] + (["metadata"] if meta_names else [])
            table = Table(*headers, title=Text(q.query), title_justify="left")
            for hit in q.hits:
                shown = (hit.text or "") if hit.kind == "text" else hit.path
                meta = [Text("; ".join(f"{k}: {v}" for k, v in hit.meta.items()))]
                table.add_row(str(hit.rank), f"{hit.score:.4f}", Text(shown),
                              *(meta if meta_names else []))  # fmt: skip
            stdout.print(table)
