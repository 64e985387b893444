"""``clipkit serve``: indexes behind an HTTP API, loaded once."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from clipkit.cli.app import app, handles_errors
from clipkit.cli.console import stderr
from clipkit.cli.options import DeviceOption, RecordedModelOption, RuntimeOption
from clipkit.serve.limits import DECODES_AT_ONCE, DEFAULT_DECODE_MB, DEFAULT_UPLOAD_MB

ENV_TOKEN = "CLIPKIT_TOKEN"
SERIAL_MATH = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@app.command()
@handles_errors
def serve(
    index: Annotated[
        list[str],
        typer.Option("--index", metavar="[NAME=]DIR", help="Index folder to serve (repeatable)."),
    ],
    model: RecordedModelOption = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    token: Annotated[
        str | None,
        typer.Option(envvar=ENV_TOKEN, help="Require Authorization: Bearer TOKEN."),
    ] = None,
    device: DeviceOption = "auto",
    runtime: RuntimeOption = "auto",
    max_upload_mb: Annotated[
        int, typer.Option("--max-upload-mb", min=1, help="Largest request body, in MB.")
    ] = DEFAULT_UPLOAD_MB,
    max_decode_mb: Annotated[
        int,
        typer.Option(
            "--max-decode-mb",
            min=1,
            help="Memory one request's images may take as they are decoded, in MB; the "
            f"server decodes at most {DECODES_AT_ONCE} times this at once.",
        ),
    ] = DEFAULT_DECODE_MB,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-host",
            metavar="NAME",
            help="Also answer requests sent to this host name (repeatable); the loopback "
            "names and the listening address are answered anyway.",
        ),
    ] = None,
    processes: Annotated[
        int,
        typer.Option(
            min=1,
            help="Server processes, each with its own copy of the indexes and models.",
        ),
    ] = 1,
) -> None:
    """Serve indexes over HTTP: search by text, image or example.

    Example: clipkit serve --index emb-index/ --port 8000
    """
    # Requests run in parallel threads; math libraries that also start a thread per core
    # for each matrix product oversubscribe the cores: on 2 cores, 32 concurrent searches
    # answered 17 queries/s with their default threads and 190 with one each
    # (benchmarks/bench_serve.py). Set before numpy, faiss and torch load; a value the user
    # set is kept.
    for variable in SERIAL_MATH:
        os.environ.setdefault(variable, "1")
    from clipkit.serve.config import ServeConfig, preflight

    config = ServeConfig(
        indexes=tuple(index),
        model=model,
        host=host,
        port=port,
        token=token,
        device=device,
        runtime=runtime,
        max_upload=max_upload_mb * 2**20,
        max_decode=max_decode_mb * 2**20,
        processes=processes,
        allowed_hosts=tuple(allowed_host or ()),
    )
    for warning in preflight(config):
        stderr.print(f"Warning: {warning}", markup=False, soft_wrap=True)
    from clipkit.serve.server import run

    run(config, say=lambda text: stderr.print(text, markup=False, soft_wrap=True))
