"""Slow and surplus clients (issue #37 D5): a real uvicorn on 127.0.0.1 with clipkit's
connection protocol, its deadlines made short. Each test waits on what the server does to a
socket (an answer, or the connection closed), never on a clock; a socket timeout only bounds
how long a broken server is waited for."""

from __future__ import annotations

import asyncio
import socket
import threading
from types import SimpleNamespace

import pytest
import uvicorn

from clipkit.serve import server
from clipkit.serve.limits import FILES_KEPT_FREE, MAX_CONNECTIONS
from clipkit.serve.server import FULL, GuardedHTTP, max_connections, sending

FAILURE_BOUND_S = 60  # how long a socket waits before the test fails (never reached when right)
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


async def _app(scope, receive, send):
    """Answers "ok" after reading the whole body; /slow after a pause longer than any
    deadline of these tests (its answer must still come)."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        more = message.get("more_body", False)
    if scope["path"] == "/slow":
        await asyncio.sleep(1.0)  # five times the deadlines: a deadline left armed fires first
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


def _serving(protocol):
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen(64)  # connections queue from now on: nothing to wait for
    config = uvicorn.Config(_app, http=protocol, log_level="error", lifespan="off")
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, kwargs={"sockets": [listening]})
    thread.start()
    return running, thread, listening.getsockname()


@pytest.fixture
def serve():
    started = []

    def start(**limits):
        protocol = type("Short", (GuardedHTTP,), {"header_timeout_s": 0.2,
                                                   "body_timeout_s": 0.2, **limits})  # fmt: skip
        running, thread, address = _serving(protocol)
        started.append((running, thread))
        return address

    yield start
    for running, thread in started:
        running.should_exit = True
        thread.join()


def _connect(address) -> socket.socket:
    client = socket.create_connection(address, timeout=FAILURE_BOUND_S)
    return client


def _until_closed(client: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    while chunk := client.recv(65536):
        received += chunk
    return received


def test_a_client_that_sends_nothing_is_disconnected(serve):
    with _connect(serve()) as client:
        assert _until_closed(client) == b""


def test_headers_sent_a_little_at_a_time_are_cut_off(serve):
    with _connect(serve()) as client:
        client.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the blank line
        assert _until_closed(client) == b""


def test_a_body_that_never_comes_is_cut_off(serve):
    with _connect(serve()) as client:
        client.sendall(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n0123")
        assert _until_closed(client) == b""


def test_the_next_request_on_a_kept_alive_connection_has_its_own_deadline(serve):
    with _connect(serve()) as client:
        client.sendall(REQUEST)
        assert client.recv(65536).endswith(b"ok")
        client.sendall(b"GET / HTTP/1.1\r\n")  # the next request starts, then stalls
        assert _until_closed(client) == b""


def test_a_slow_answer_is_not_cut_off(serve):
    """The deadlines bound the client's sending, not the server's work."""
    with _connect(serve()) as client:
        client.sendall(b"GET /slow HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert _until_closed(client).endswith(b"ok")


def test_connections_beyond_the_cap_are_answered_503_and_closed_at_once(serve):
    address = serve(header_timeout_s=FAILURE_BOUND_S, max_connections=3)
    held = [_connect(address) for _ in range(3)]
    try:
        with _connect(address) as surplus:
            assert _until_closed(surplus) == FULL
        # one of the three finishes (the server has let it go when the client sees the end)
        held[0].sendall(REQUEST.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
        assert _until_closed(held[0]).endswith(b"ok")
        with _connect(address) as next_one:  # and there is room again
            next_one.sendall(REQUEST.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
            assert _until_closed(next_one).endswith(b"ok")
    finally:
        for client in held:
            client.close()


def test_the_cap_leaves_room_below_the_open_file_limit(monkeypatch):
    limits = {"soft": 1024}
    monkeypatch.setattr("clipkit.serve.server.resource.getrlimit", lambda _: (limits["soft"], 4096))
    assert max_connections() == 1024 - FILES_KEPT_FREE
    limits["soft"] = 1_000_000
    assert max_connections() == MAX_CONNECTIONS


@pytest.mark.parametrize(
    ("cycle", "phase"),
    [(None, "headers"),
     (SimpleNamespace(response_complete=False, more_body=True), "body"),
     (SimpleNamespace(response_complete=False, more_body=False), None),
     (SimpleNamespace(response_complete=True, more_body=False), "headers")],
)  # fmt: skip
def test_what_the_client_is_sending_follows_the_request(cycle, phase):
    assert sending(cycle) == phase


def test_clipkit_serve_runs_uvicorn_with_the_guarded_protocol(monkeypatch):
    given = {}
    monkeypatch.setattr(server.uvicorn, "run", lambda app, **options: given.update(options))
    server._uvicorn(SimpleNamespace(host="127.0.0.1", port=8000), app=None)
    assert given["http"] == "clipkit.serve.server:GuardedHTTP"
    assert given["timeout_keep_alive"] == server.KEEP_ALIVE_S
