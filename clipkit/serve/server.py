"""Run the API under uvicorn until Ctrl-C or SIGTERM, with limits on slow and surplus clients.

With ``--processes N`` > 1, uvicorn starts N processes that share the listening socket; each
loads its own indexes and models (memory x N) from the config the parent passes in the
environment, so Python's one-thread-at-a-time lock no longer limits the server to about one
core. Metrics are then summed over the processes (prometheus-client's multiprocess mode).

A stop (Ctrl-C, SIGTERM) stops accepting connections and lets the requests in flight finish
for ``GRACE_S``; those still running then are answered 503 (``app``), and the process ends
within ``EXIT_WITHIN_S`` more even if a request's thread is stuck in a decode or a search
(one was seen to keep a stopped server alive 40 s).

Client connections: uvicorn alone keeps a connection that sends nothing, or its headers a
byte at a time, open for as long as the client likes; with the usual limit of 1,024 open
files, 1,100 such connections locked every other client out. :class:`GuardedHTTP` is
uvicorn's own protocol with two checks added:

- a deadline while the client sends: the request line and headers within
  ``HEADER_TIMEOUT_S`` (from the connection's start, or from the first byte of the next
  request on a kept-alive one), the body within ``BODY_TIMEOUT_S`` after them; a client
  that misses it is disconnected. While the server works on an answer there is none: a slow
  search is not the client's fault;
- a connection beyond :func:`max_connections` is answered 503 and closed at once, so that
  the process keeps files for the indexes, models and the clients it serves.

uvicorn's ``timeout_keep_alive`` already closes a connection idle between requests.
"""

from __future__ import annotations

import asyncio
import gc
import os
import resource
import tempfile
import threading
from collections.abc import Callable
from typing import Any, Literal

import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from clipkit.serve.app import METRICS_FOLDER, create_app
from clipkit.serve.config import ServeConfig, from_environment, to_environment
from clipkit.serve.limits import (
    BODY_TIMEOUT_S,
    EXIT_WITHIN_S,
    FILES_KEPT_FREE,
    GRACE_S,
    HEADER_TIMEOUT_S,
    KEEP_ALIVE_S,
    MAX_CONNECTIONS,
)
from clipkit.serve.state import Served

CONFIG_VARIABLE = "CLIPKIT_SERVE_CONFIG"
STOPPED_EXIT_CODE = 1  # a process ended by the bound, its stuck threads still running


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
        say(f"Listening on http://{config.host}:{config.port} (API described at /openapi.json)")
        _uvicorn(config, create_app(served, on_stop=end_soon))
        return
    del served  # each worker loads its own
    gc.collect()
    with tempfile.TemporaryDirectory(prefix="clipkit-metrics-") as metrics:
        os.environ[CONFIG_VARIABLE] = to_environment(config)
        os.environ[METRICS_FOLDER] = metrics
        say(
            f"Listening on http://{config.host}:{config.port} with {config.processes} "
            "processes (API described at /openapi.json)"
        )
        _uvicorn(config, f"{__name__}:worker_app", factory=True, workers=config.processes)


def _uvicorn(config: ServeConfig, app: Any, **more: Any) -> None:
    """Serve ``app`` (the app, or the import string of a factory) until stopped."""
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        log_level="warning",
        http=f"{__name__}:GuardedHTTP",  # a name: worker processes import it themselves
        timeout_keep_alive=KEEP_ALIVE_S,
        timeout_graceful_shutdown=GRACE_S,
        **more,
    )


def worker_app() -> Any:
    """The app of one worker process, from the config its parent left in the environment."""
    return create_app(Served(from_environment(os.environ[CONFIG_VARIABLE])), on_stop=end_soon)


def end_soon(seconds: float = EXIT_WITHIN_S) -> None:
    """End this process in ``seconds`` unless it has ended by then (called once the server
    has stopped: only threads stuck in a request keep it alive after that)."""
    timer = threading.Timer(seconds, os._exit, (STOPPED_EXIT_CODE,))
    timer.daemon = True  # it does not itself keep the process alive
    timer.start()


Phase = Literal["headers", "body"] | None  # what the client is sending, if anything
_TOO_MANY = b"Too many connections; try again later.\n"
FULL = (  # the answer to a connection beyond the cap, sent before it closes
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\nretry-after: 1\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(_TOO_MANY), _TOO_MANY)
)


def max_connections() -> int:
    """``MAX_CONNECTIONS``, or fewer where the open-file limit leaves less room."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(1, min(MAX_CONNECTIONS, soft - FILES_KEPT_FREE))


def sending(cycle: Any) -> Phase:
    """What a connection's client is sending, from its current request-response cycle
    (uvicorn's; None before the first request's headers are in)."""
    if cycle is None or cycle.response_complete:
        return "headers"  # the first request, or the next one on a kept-alive connection
    if cycle.more_body:
        return "body"
    return None  # the request is in: the server is answering


class GuardedHTTP(AutoHTTPProtocol):  # type: ignore[misc,valid-type]
    """uvicorn's HTTP protocol with a deadline while the client sends and a connection cap
    (the class attributes: a test makes them shorter in a subclass)."""

    header_timeout_s: float = HEADER_TIMEOUT_S
    body_timeout_s: float = BODY_TIMEOUT_S
    max_connections: int = max_connections()

    def connection_made(self, transport: asyncio.Transport) -> None:
        full = len(self.connections) >= self.max_connections
        super().connection_made(transport)
        self._phase: Phase = None
        self._deadline: asyncio.TimerHandle | None = None
        if full:
            transport.write(FULL)
            transport.close()  # its file is free again now, not when the client leaves
            return
        self._follow()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        super().connection_lost(exc)

    def _follow(self) -> None:
        """Start, change or stop the deadline as the request moves on."""
        phase = sending(self.cycle)
        if phase == self._phase or self.transport.is_closing():
            return
        self._phase = phase
        self._cancel()
        if phase is not None:
            seconds = self.header_timeout_s if phase == "headers" else self.body_timeout_s
            self._deadline = self.loop.call_later(seconds, self._too_slow)

    def _too_slow(self) -> None:
        self._deadline = None
        self.transport.close()

    def _cancel(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
