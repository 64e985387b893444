"""The HTTP API of ``clipkit serve`` (FastAPI): routes, the token, limits, errors, metrics.

The only module that imports the web framework. Handlers are plain functions, so FastAPI runs
them in its thread pool: encoding and search never block the event loop. Every failure is a
JSON ``{"error": ..., "hint": ...}`` with a 4xx status: bad input is never a 500 nor a
traceback.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clipkit import __version__
from clipkit.errors import ClipkitError
from clipkit.search.run import QueryResult
from clipkit.serve.hosts import HostRule, host_name, host_rule
from clipkit.serve.limits import MAX_EMBED_IMAGES, MAX_K, MAX_QUERIES, MAX_QUERY_CHARS
from clipkit.serve.page import CSP, LOGIN, PAGE, SCRIPT, STYLE
from clipkit.serve.state import NotFound, Served
from clipkit.serve.uploads import TooLarge

TOKEN_COOKIE = "clipkit_token"
# Set (by ``server``) when several worker processes serve: each writes its metrics there and
# /metrics sums them (prometheus-client's multiprocess mode reads this variable).
METRICS_FOLDER = "PROMETHEUS_MULTIPROC_DIR"
# Answered without the token: a liveness probe, the login form's target and its style.
OPEN_PATHS = frozenset({"/api/health", "/api/login", "/page.css"})


class SearchRequest(BaseModel):
    """A weighted query: texts, ids of indexed rows ("more like this"), one weight per part."""

    texts: list[Annotated[str, Field(min_length=1, max_length=MAX_QUERY_CHARS)]] = Field(
        default_factory=list, max_length=MAX_QUERIES
    )
    rows: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        default_factory=list, max_length=MAX_QUERIES
    )
    weights: list[float] | None = Field(default=None, max_length=2 * MAX_QUERIES)
    k: int = Field(default=10, ge=1, le=MAX_K)
    index: str | None = None


class EmbedRequest(BaseModel):
    """Texts and images (base64, or ``data:`` URLs) to embed with an index's model."""

    texts: list[Annotated[str, Field(min_length=1, max_length=MAX_QUERY_CHARS)]] = Field(
        default_factory=list, max_length=256
    )
    images: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list, max_length=MAX_EMBED_IMAGES
    )
    index: str | None = None

    @model_validator(mode="after")
    def _something(self) -> EmbedRequest:
        if not self.texts and not self.images:
            raise ValueError("give texts, images or both")
        return self


def create_app(served: Served, on_stop: Callable[[], None] | None = None) -> FastAPI:
    """The API over ``served``; every request needs its token when the config sets one.
    ``on_stop`` is called once the server has stopped (its lifespan's end)."""
    app = FastAPI(
        # No /docs nor /redoc: their pages load scripts from a CDN (offline they break, and
        # nothing checks what the CDN sends); the description itself is /openapi.json.
        docs_url=None,
        redoc_url=None,
        lifespan=_stopping(on_stop),
        title="clipkit",
        version=__version__,
        description="Search CLIP embedding indexes by text, image or example.",
        max_body_size=served.config.max_upload,
    )
    registry = CollectorRegistry()
    requests = Counter(
        "clipkit_requests", "Requests answered", ["route", "status"], registry=registry
    )
    latency = Histogram(
        "clipkit_request_seconds", "Time to answer", ["route"], registry=registry,
        buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
    )  # fmt: skip

    hosts = host_rule(served.config.host, served.config.allowed_hosts)
    app.add_middleware(GuardAndCount, token=served.config.token, hosts=hosts,
                       requests=requests, latency=latency)  # fmt: skip

    @app.exception_handler(NotFound)
    async def not_found(_: Request, error: NotFound) -> Response:
        return _error(404, error.message, error.hint)

    @app.exception_handler(TooLarge)
    async def too_large(_: Request, error: TooLarge) -> Response:
        return _error(413, error.message, error.hint)

    @app.exception_handler(ClipkitError)
    async def bad_input(_: Request, error: ClipkitError) -> Response:
        return _error(422, error.message, error.hint)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, error: RequestValidationError) -> Response:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
            for e in error.errors()
        )
        return _error(422, f"Invalid request: {problems}.", "See /openapi.json for the API.")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> Response:
        hint = "See /openapi.json for the API." if error.status_code == 404 else ""
        return _error(error.status_code, str(error.detail), hint)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, error: Exception) -> Response:
        return _error(500, f"Unexpected {type(error).__name__}.", "Please report it.")

    def pick(name: str | None) -> str:
        return name if name is not None else served.names[0]

    @app.get("/", include_in_schema=False)
    def page() -> Response:
        return _page(PAGE)

    @app.get("/page.js", include_in_schema=False)
    def script() -> Response:
        return Response(SCRIPT, media_type="text/javascript", headers=_NOSNIFF)

    @app.get("/page.css", include_in_schema=False)
    def style() -> Response:
        return Response(STYLE, media_type="text/css", headers=_NOSNIFF)

    @app.post("/api/login", include_in_schema=False)
    def login(token: Annotated[str, Form(max_length=1000)] = "") -> Response:
        """The page's sign-in form: the right token sets an HttpOnly, same-site cookie."""
        expected = served.config.token
        if expected is None:
            return RedirectResponse("/", status_code=303)
        if not hmac.compare_digest(token.encode(), expected.encode()):
            return _page(LOGIN, 401)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(TOKEN_COOKIE, expected, httponly=True, samesite="strict", path="/")
        return response

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "indexes": len(served.names)}

    @app.get("/api/indexes")
    def indexes() -> list[dict[str, Any]]:
        return served.describe()

    @app.get("/api/search")
    def search_get(
        q: Annotated[str, Query(min_length=1, max_length=MAX_QUERY_CHARS)],
        k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
        index: str | None = None,
    ) -> Response:
        return _found(served.search(pick(index), texts=[q], k=k), pick(index))

    @app.post("/api/search")
    def search_post(body: SearchRequest) -> Response:
        found = served.search(
            pick(body.index), texts=body.texts, rows=body.rows, weights=body.weights, k=body.k
        )
        return _found(found, pick(body.index))

    @app.post("/api/search/images")
    def search_images(
        images: Annotated[list[UploadFile], File(max_length=MAX_QUERIES)],
        q: Annotated[str | None, Form(max_length=MAX_QUERY_CHARS)] = None,
        weights: Annotated[str | None, Form(max_length=400)] = None,
        k: Annotated[int, Form(ge=1, le=MAX_K)] = 10,
        index: Annotated[str | None, Form()] = None,
    ) -> Response:
        found = served.search(
            pick(index),
            texts=[q] if q else [],
            images=[upload.file.read() for upload in images],
            weights=_weights(weights),
            k=k,
        )
        return _found(found, pick(index))

    @app.post("/api/embed")
    def embed(body: EmbedRequest) -> dict[str, Any]:
        """Unit-norm vectors of the texts, then of the images, by the index's model."""
        index = served.index(pick(body.index))
        images = [_base64_image(n, text) for n, text in enumerate(body.images)]
        parts = served.embed(index, body.texts, images)
        return {
            "model": index.loaded.info.model,
            "fingerprint": index.loaded.info.fingerprint,
            "kinds": ["text"] * len(body.texts) + ["image"] * len(images),
            "vectors": np.concatenate(parts).tolist(),
        }

    @app.get("/api/thumbnail/{index}/{row_id}")
    def thumbnail(index: str, row_id: str) -> Response:
        data = served.thumbnail(index, row_id)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(_metrics_of(registry)), media_type=CONTENT_TYPE_LATEST)

    return app


class GuardAndCount:
    """ASGI middleware: the Host check and the token check, then request counts and
    latencies by route template (never the path requested). Plain ASGI, as Starlette's
    ``BaseHTTPMiddleware`` costs a task and a stream per request."""

    def __init__(
        self,
        app: ASGIApp,
        token: str | None,
        hosts: HostRule,
        requests: Counter,
        latency: Histogram,
    ) -> None:
        self.app = app
        self.token = token
        self.hosts = hosts
        self.requests = requests
        self.latency = latency

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]  # unless a response starts: an exception reaches the 500 handler
        answered = [False]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0], answered[0] = message["status"], True
            await send(message)

        try:
            request = Request(scope)
            host = request.headers.get("host")
            refusal: Response
            if not self.hosts.allows(host):
                refusal = _error(
                    400,
                    f"This server does not answer to the host {host_name(host or '')!r}.",
                    "Reach it by the address it listens on, or start it with --allowed-host NAME.",
                )
                await refusal(scope, receive, sending)
            elif (
                self.token is not None
                and scope["path"] not in OPEN_PATHS
                and not _authorised(request, self.token)
            ):
                refusal = (  # the page asks for the token; the API says it is needed
                    _page(LOGIN, 401)
                    if scope["path"] == "/"
                    else _error(401, "A token is needed.", "Send Authorization: Bearer.")
                )
                await refusal(scope, receive, sending)
            else:
                await self.app(scope, receive, sending)
        except asyncio.CancelledError:
            # The server stopped and its grace period ran out with this request unanswered:
            # say so, rather than uvicorn's bare 500.
            if not answered[0]:
                stopping = _error(503, "The server is stopping.", "Send the request again.")
                await stopping(scope, receive, sending)
            raise
        finally:
            name = getattr(scope.get("route"), "path", "unmatched")
            self.requests.labels(name, str(status[0])).inc()
            self.latency.labels(name).observe(time.perf_counter() - started)


def _stopping(on_stop: Callable[[], None] | None) -> Callable[[FastAPI], Any]:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if on_stop is not None:
            on_stop()

    return lifespan


def _metrics_of(registry: CollectorRegistry) -> CollectorRegistry:
    """This process's registry, or with worker processes, one that sums all of theirs."""
    folder = os.environ.get(METRICS_FOLDER)
    if not folder:
        return registry
    summed = CollectorRegistry()
    multiprocess.MultiProcessCollector(summed, path=folder)
    return summed


def _authorised(request: Request, token: str) -> bool:
    """The bearer token or the page's cookie, compared in constant time."""
    header = request.headers.get("authorization", "")
    given = header[7:] if header[:7].lower() == "bearer " else request.cookies.get(TOKEN_COOKIE)
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


_NOSNIFF = {"X-Content-Type-Options": "nosniff"}


def _page(html: str, status: int = 200) -> HTMLResponse:
    headers = {**_NOSNIFF, "Content-Security-Policy": CSP, "Referrer-Policy": "no-referrer"}
    return HTMLResponse(html, status_code=status, headers=headers)


def _error(status: int, message: str, hint: str | None = "") -> JSONResponse:
    return JSONResponse({"error": message, "hint": hint or ""}, status_code=status)


def _found(found: QueryResult, index: str) -> JSONResponse:
    """A search's answer: the query, the index and ``clipkit search --format json``'s hit
    records less ``path`` (where a file lies on the server is not the client's business: the
    uri names it within the index). Made here rather than by FastAPI's encoder, which costs
    more than the search on a small index; hits hold only JSON types."""
    hits = [{k: v for k, v in hit.as_dict().items() if k != "path"} for hit in found.hits]
    return JSONResponse({"query": found.query, "index": index, "hits": hits})


def _base64_image(number: int, text: str) -> bytes:
    """The bytes of ``images[number]``: base64, optionally a ``data:...;base64,`` URL."""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ClipkitError(
            f"images[{number}] is not base64.", "Send each image file's bytes in base64."
        ) from None


def _weights(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise ClipkitError(f"{text!r} is not a comma-separated list of numbers.", "") from None
