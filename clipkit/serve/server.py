"""Run the API under uvicorn until Ctrl-C or SIGTERM (in-flight requests finish first)."""

from __future__ import annotations

from collections.abc import Callable

import uvicorn

from clipkit.serve.app import create_app
from clipkit.serve.config import ServeConfig
from clipkit.serve.state import Served


def run(config: ServeConfig, say: Callable[[str], None] = print) -> None:
    """Load every index and model, then serve; returns when the server has stopped.

    Raises:
        ClipkitError: an index or model that cannot be loaded (before anything listens).
    """
    served = Served(config)
    for described in served.describe():
        say(
            f"Serving {described['name']}: {described['rows']} {described['kind']} rows, "
            f"{described['model']} on {described['runtime']}"
        )
    say(f"Listening on http://{config.host}:{config.port} (API docs at /docs)")
    uvicorn.run(
        create_app(served),
        host=config.host,
        port=config.port,
        log_level="warning",
        timeout_graceful_shutdown=10,
    )
