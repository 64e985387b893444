"""The ``clipkit`` command line: parse options, call one service, render its result.

This package is the only place that imports typer and rich. Services (and with them torch,
open_clip, faiss and pyarrow) are imported inside the commands, so ``clipkit --help`` stays
instant. This module holds the app, the error mapping and shared options; the commands live in
the ``*_cmd`` modules, imported at the end to register themselves.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from enum import Enum
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from clipkit import __version__
from clipkit.config import ENV_DEBUG, ENV_MODEL
from clipkit.errors import ClipkitError, StoppedError

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
RecordedModelOption = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        envvar=ENV_MODEL,
        help="Model spec (default: the embeddings' model, else ViT-B-32).",
    ),
]
WorkersOption = Annotated[
    int | None, typer.Option(min=0, help="Image decode processes (default: one per core).")
]
SKIPPED_SHOWN = 20


def print_skipped(failures: Any, shown: int = SKIPPED_SHOWN) -> None:
    """The first ``shown`` skipped inputs (uri, stage, error) on stderr, then a count."""
    for uri, stage, error in failures[:shown]:
        stderr.print(f"  skipped {uri}: {stage}: {error}", markup=False)
    if len(failures) > shown:
        stderr.print(f"  … and {len(failures) - shown} more", markup=False)


DeviceOption = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
FormatOption = Annotated[
    OutputFormat, typer.Option("--format", "-f", help="Output format for stdout.")
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
        except StoppedError as error:
            _print_error(error.message, error.hint)
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


class KindChoice(str, Enum):
    auto = "auto"
    image = "image"
    text = "text"


class StorageDtype(str, Enum):
    float32 = "float32"
    float16 = "float16"


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
    # A service reports a stage first when its first batch is done: the stage began when the
    # previous report came (or the bar opened), not then, or the rate would be near infinite.
    last_report = [time.perf_counter()]
    with Progress(*columns, console=stderr, transient=False) as bar:

        def update(stage: str, done: int, total: int) -> None:
            now = time.perf_counter()
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total, rate="")
                started[stage] = last_report[0]
            last_report[0] = now
            elapsed = max(now - started[stage], 1e-9)
            bar.update(tasks[stage], completed=done, rate=f"{done / elapsed:.1f}/s")

        yield update


# Registration, in the order `clipkit --help` lists the commands: the workflow's order.
from clipkit.cli import (  # noqa: E402, F401, I001
    quickstart_cmd,
    train_cmd,
    embed_cmd,
    search_cmd,
    zeroshot_cmd,
    audit_cmd,
    models_cmd,
)


def main() -> None:
    """Console-script entry point."""
    # A cluster scheduler (Slurm, Kubernetes) or `timeout` stops a job with SIGTERM before it
    # kills it; ending it like Ctrl-C lets embed write the embeddings it holds and train save
    # its last step. Decode workers ignore SIGTERM (see pipeline.decode_worker_init).
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        app()
    finally:
        _end_stuck_workers()


def _end_stuck_workers() -> None:
    """Kill decode workers still alive once the command is over: they are stuck in a read (a
    hung network or FUSE mount). Everything is saved by now, and they ignore SIGTERM, so the
    interpreter's exit, which joins its child processes, would otherwise wait for ever."""
    multiprocessing = sys.modules.get("multiprocessing")  # no workers if it was never imported
    children = multiprocessing.active_children() if multiprocessing else []
    if not children:
        return
    # A DataLoader still referenced (by a traceback) watches SIGCHLD and would raise "worker
    # killed" here; the command is over, so the default disposition is right.
    if hasattr(signal, "SIGCHLD"):
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in children:
        child.kill()
        child.join(5)


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
