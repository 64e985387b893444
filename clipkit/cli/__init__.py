"""The ``clipkit`` command line: parse options, call one service, render its result.

This package is the only place that imports typer and rich. Services (and with them torch,
open_clip, faiss and pyarrow) are imported inside the commands, so ``clipkit --help`` stays
instant. ``app`` holds the Typer app and the error mapping, ``options`` the options commands
share, ``render`` the shared renderers, and each ``*_cmd`` module one command.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

from clipkit.cli.app import app

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
