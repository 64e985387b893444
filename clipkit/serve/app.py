"""The HTTP API of ``clipkit serve`` (FastAPI): routes, the token, limits, errors, metrics.

The only module that imports the web framework. Handlers are plain functions, so FastAPI runs
them in its thread pool: encoding and search never block the event loop. Every failure is a
JSON ``{"error": ..., "hint": ...}`` with a 4xx status: bad input is never a 500 nor a
traceback.
"""

from __future__ import annotations

import hmac
import time
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from clipkit import __version__
from clipkit.errors import ClipkitError
from clipkit.serve.config import MAX_K, MAX_QUERIES, MAX_QUERY_CHARS
from clipkit.serve.page import CSP, LOGIN, PAGE, SCRIPT, STYLE
from clipkit.serve.state import NotFound, Served

TOKEN_COOKIE = "clipkit_token"
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
    texts: list[Annotated[str, Field(min_length=1, max_length=MAX_QUERY_CHARS)]] = Field(
        min_length=1, max_length=256
    )
    index: str | None = None


def create_app(served: Served) -> FastAPI:
    """The API over ``served``; every request needs its token when the config sets one."""
    app = FastAPI(
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

    @app.middleware("http")
    async def guard_and_count(request: Request, call_next: Any) -> Response:
        started = time.perf_counter()
        token = served.config.token
        if (
            token is not None
            and request.url.path not in OPEN_PATHS
            and not _authorised(request, token)
        ):
            response: Response = (
                _page(LOGIN, 401)  # the page asks for the token; the API says it is needed
                if request.url.path == "/"
                else _error(401, "A token is needed.", "Send Authorization: Bearer.")
            )
        else:
            response = await call_next(request)
        route = request.scope.get("route")
        name = getattr(route, "path", "unmatched")  # a template, never the path requested
        requests.labels(name, str(response.status_code)).inc()
        latency.labels(name).observe(time.perf_counter() - started)
        return response

    @app.exception_handler(NotFound)
    async def not_found(_: Request, error: NotFound) -> Response:
        return _error(404, error.message, error.hint)

    @app.exception_handler(ClipkitError)
    async def bad_input(_: Request, error: ClipkitError) -> Response:
        return _error(422, error.message, error.hint)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, error: RequestValidationError) -> Response:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
            for e in error.errors()
        )
        return _error(422, f"Invalid request: {problems}.", "See /docs for the API.")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> Response:
        hint = "See /docs for the API." if error.status_code == 404 else ""
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
    ) -> dict[str, Any]:
        found = served.search(pick(index), texts=[q], k=k)
        return {"query": found.query, "index": pick(index), "hits": _hits(found)}

    @app.post("/api/search")
    def search_post(body: SearchRequest) -> dict[str, Any]:
        found = served.search(
            pick(body.index), texts=body.texts, rows=body.rows, weights=body.weights, k=body.k
        )
        return {"query": found.query, "index": pick(body.index), "hits": _hits(found)}

    @app.post("/api/search/images")
    def search_images(
        images: Annotated[list[UploadFile], File(max_length=MAX_QUERIES)],
        q: Annotated[str | None, Form(max_length=MAX_QUERY_CHARS)] = None,
        weights: Annotated[str | None, Form(max_length=400)] = None,
        k: Annotated[int, Form(ge=1, le=MAX_K)] = 10,
        index: Annotated[str | None, Form()] = None,
    ) -> dict[str, Any]:
        found = served.search(
            pick(index),
            texts=[q] if q else [],
            images=[upload.file.read() for upload in images],
            weights=_weights(weights),
            k=k,
        )
        return {"query": found.query, "index": pick(index), "hits": _hits(found)}

    @app.post("/api/embed")
    def embed(body: EmbedRequest) -> dict[str, Any]:
        index = served.index(pick(body.index))
        (vectors,) = served.embed(index, body.texts, [])
        return {
            "model": index.loaded.info.model,
            "fingerprint": index.loaded.info.fingerprint,
            "vectors": vectors.tolist(),
        }

    @app.get("/api/thumbnail/{index}/{row_id}")
    def thumbnail(index: str, row_id: str) -> Response:
        data = served.thumbnail(index, row_id)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


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


def _hits(found: Any) -> list[dict[str, Any]]:
    """``clipkit search --format json``'s hit records, less ``path``: where a file lies on the
    server is not the client's business (the uri names it within the index)."""
    return [{k: v for k, v in hit.as_dict().items() if k != "path"} for hit in found.hits]


def _weights(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise ClipkitError(f"{text!r} is not a comma-separated list of numbers.", "") from None
