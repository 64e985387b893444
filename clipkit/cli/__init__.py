"""The ``clipkit`` command line: parse options, call one service, render its result.

This package is the only place that imports typer and rich. Services (and with them torch,
open_clip, faiss and pyarrow) are imported inside the commands, so ``clipkit --help`` stays
instant. ``app`` holds the Typer app and the error mapping, ``options`` the options commands
share, ``render`` the shared renderers, and each ``*_cmd`` module one command.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Any

from clipkit.cli.app import app, quick_exit_requested

__all__ = ["app", "main"]

# Registration, in the order `clipkit --help` lists the commands: the workflow's order.
from clipkit.cli import (  # noqa: E402, F401, I001
    quickstart_cmd,
    train_cmd,
    embed_cmd,
    index_cmd,
    search_cmd,
    zeroshot_cmd,
    audit_cmd,
    export_cmd,
    serve_cmd,
    models_cmd,
)


def main() -> None:
    """Console-script entry point."""
    # A cluster scheduler (Slurm, Kubernetes) or `timeout` stops a job with SIGTERM before it
    # kills it; ending it like Ctrl-C lets embed write the embeddings it holds and train save
    # its last step. Decode workers ignore SIGTERM (see pipeline.decode_worker_init).
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        app()  # Click ends every run, success included, with SystemExit
    except SystemExit as done:
        # Killed mid-write, a worker of a ProcessPoolExecutor (the ONNX runtime's decoders)
        # can leave its executor's thread waiting for the rest of a message, and the
        # interpreter's exit joins that thread: after a kill, end without the teardown.
        if _end_stuck_workers() or quick_exit_requested():
            _exit_now(done.code)
        raise
    finally:
        _end_stuck_workers()


def _exit_now(code: int | str | None) -> None:
    """End the process at once, as ``sys.exit(code)`` would report it (see
    ``cli.app.exit_quickly_when_done``): what is buffered for stdout and stderr is written
    first."""
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    for stream in (sys.stdout, sys.stderr):
        # A closed pipe (| head) or stream: nothing more can be written to it
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code or 0)


def _end_stuck_workers() -> bool:
    """Kill decode workers still alive once the command is over: they are stuck in a read (a
    hung network or FUSE mount), or still busy after Ctrl-C. Everything is saved by now, and
    they ignore SIGTERM, so the interpreter's exit, which joins its child processes, would
    otherwise wait for them. Returns whether any was killed."""
    multiprocessing = sys.modules.get("multiprocessing")  # no workers if it was never imported
    children = multiprocessing.active_children() if multiprocessing else []
    if not children:
        return False
    # A DataLoader still referenced (by a traceback) watches SIGCHLD and would raise "worker
    # killed" here; the command is over, so the default disposition is right.
    if hasattr(signal, "SIGCHLD"):
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in children:
        child.kill()
        child.join(5)
    return True


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
