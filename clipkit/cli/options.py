"""Options that several commands share, so that the same option means the same everywhere:
the model, the device, decode workers, --strict, and one ``--format`` per shape of output."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from clipkit.config import ENV_MODEL, ENV_RAY_ADDRESS, ENV_RUNTIME, REPORT_SUFFIXES, Engine, Runtime


class DocumentFormat(str, Enum):
    """stdout of a command whose output is one record (``models info``, ``quickstart``)."""

    table = "table"
    json = "json"


class RowsFormat(str, Enum):
    """stdout of a command whose output is rows (search hits, predictions, audited pairs)."""

    table = "table"
    json = "json"
    jsonl = "jsonl"
    csv = "csv"


class KindChoice(str, Enum):
    auto = "auto"
    image = "image"
    text = "text"


class SearchKind(str, Enum):
    auto = "auto"
    image = "image"
    text = "text"
    all = "all"


ModelOption = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        envvar=ENV_MODEL,
        metavar="SPEC",
        help="Model spec: ARCH[:TAG], ARCH:random, "
        "hf-hub:org/repo, or a checkpoint file or training-run folder.",
    ),
]
RecordedModelOption = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        envvar=ENV_MODEL,
        metavar="SPEC",
        help="Model spec.",
        show_default="the one the embeddings or index record, else ViT-B-32",
    ),
]
DeviceOption = Annotated[
    str, typer.Option("--device", metavar="DEVICE", help="auto, cpu, cuda, cuda:N or mps.")
]
# One default for every command that decodes images: one process per core, at most 8
# (pipeline.default_workers). Decoding is the usual bottleneck of embed, zeroshot and audit,
# and train's workers decode and augment while the model steps, so all of them gain from cores.
WorkersOption = Annotated[
    int | None,
    typer.Option(
        min=0,
        metavar="N",
        help="Image decode processes.",
        show_default="one per core, at most 8",
    ),
]
RuntimeOption = Annotated[
    Runtime,
    typer.Option(
        "--runtime",
        envvar=ENV_RUNTIME,
        help="What encodes: torch, onnx (a cached export, no torch), or auto (onnx when the "
        "cache has this model's export and the device is the CPU).",
    ),
]
EngineOption = Annotated[
    Engine,
    typer.Option(
        "--engine",
        help="Where the work runs: this machine's processes, or a Ray cluster (started on "
        'this machine when none is given; pip install "clipkit[ray]").',
    ),
]
RayAddressOption = Annotated[
    str | None,
    typer.Option(
        "--ray-address",
        envvar=ENV_RAY_ADDRESS,
        metavar="ADDRESS",
        help="The Ray cluster to run on (--engine ray), e.g. 10.0.0.5:6379.",
        show_default="a Ray started on this machine",
    ),
]
# -o/--out is where a command writes what it makes: a folder where it makes one (a run,
# embeddings, an index, an export), else one file of rows whose suffix picks the format.
ROWS_FILE = "/".join(REPORT_SUFFIXES) + " (the suffix picks the format)"

StrictOption = Annotated[
    bool,
    typer.Option("--strict/--no-strict", help="Exit 1 if any input was skipped (after the work)."),
]
RowsFormatOption = Annotated[RowsFormat, typer.Option("--format", "-f", help="stdout format.")]
DocumentFormatOption = Annotated[
    DocumentFormat, typer.Option("--format", "-f", help="stdout format.")
]
IncludeHiddenOption = Annotated[
    bool,
    typer.Option(
        "--include-hidden/--no-include-hidden", help="Also read hidden files and folders."
    ),
]


def typed_text(value: str | None) -> str | None:
    """Text typed on the command line, as Unicode that any file or page can hold.

    Python hands over argv bytes that are not UTF-8 (a Latin-1 terminal's "é") as lone
    surrogates, which JSON, HTML and Parquet writers refuse; they become U+FFFD, as in text
    files that ``clipkit embed`` reads.
    """
    if value is None:
        return None
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that is no escaped byte
        raw = value.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "replace")
