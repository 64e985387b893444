"""Run the API under uvicorn until Ctrl-C or SIGTERM (in-flight requests finish first).

With ``--processes N`` > 1, uvicorn starts N processes that share the listening socket; each
loads its own indexes and models (memory x N) from the config the parent passes in the
environment, so Python's one-thread-at-a-time lock no longer limits the server to about one
core. Metrics are then summed over the processes (prometheus-client's multiprocess mode).
"""

from __future__ import annotations

import gc
import os
import tempfile
from collections.abc import Callable
from typing import Any

import uvicorn

from clipkit.serve.app import METRICS_FOLDER, create_app
from clipkit.serve.config import ServeConfig, from_environment, to_environment
from clipkit.serve.state import Served

CONFIG_VARIABLE = "CLIPKIT_SERVE_CONFIG"
GRACE_S = 10  # how long requests in flight may take to finish after Ctrl-C / SIGTERM


def run(config: ServeConfig, say: Callable[[str], None] = print) -> None:
    """Load every index and model, then serve; returns when the server has stopped.

    Raises:
        ClipkitError: an index or model that cannot be loaded (before anything listens).
    """
    served = Served(config)  # with processes too: a bad index or model stops us here
    for described in served.describe():
        say(
            f"Serving {described['name']}: {described['rows']} {described['kind']} rows, "
            f"{described['model']} on {described['runtime']}"
        )
    if config.processes == 1:
        say(f"Listening on http://{config.host}:{config.port} (API docs at /docs)")
        _uvicorn(config, create_app(served))
        return
    del served  # each worker loads its own
    gc.collect()
    with tempfile.TemporaryDirectory(prefix="clipkit-metrics-") as metrics:
        os.environ[CONFIG_VARIABLE] = to_environment(config)
        os.environ[METRICS_FOLDER] = metrics
        say(
            f"Listening on http://{config.host}:{config.port} with {config.processes} "
            "processes (API docs at /docs)"
        )
        _uvicorn(config, f"{__name__}:worker_app", factory=True, workers=config.processes)


def _uvicorn(config: ServeConfig, app: Any, **more: Any) -> None:
    """Serve ``app`` (the app, or the import string of a factory) until stopped."""
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        log_level="warning",
        timeout_graceful_shutdown=GRACE_S,
        **more,
    )


def worker_app() -> Any:
    """The app of one worker process, from the config its parent left in the environment."""
    return create_app(Served(from_environment(os.environ[CONFIG_VARIABLE])))
