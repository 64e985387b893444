"""``clipkit serve``'s API through FastAPI's test client on a tiny-model index: hits equal
``clipkit search``'s, queries by example and upload, the token, limits (400/413/422, never a
500), path traversal (404), metrics, thumbnails, and reloading an index changed on disk."""

from __future__ import annotations

import asyncio
import base64
import http.client
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from clipkit import cli
from clipkit.embed import EmbedConfig, embed
from clipkit.errors import InputError, UsageError
from clipkit.index import IndexConfig, build_index
from clipkit.search import SearchConfig, search
from clipkit.serve.app import create_app
from clipkit.serve.config import ServeConfig, from_environment, preflight, to_environment
from clipkit.serve.limits import MAX_EMBED_IMAGES
from clipkit.serve.state import Served
from tests.helpers import TINY, free_port

TOKEN = "a-long-enough-secret"
LOOPBACK = "http://127.0.0.1"  # the Host a client of the default server sends
JSON = {"content-type": "application/json"}
COLOURS = [(220, 20, 20), (20, 200, 30), (20, 30, 220), (240, 220, 10), (150, 20, 160)]


def _png(colour, size=48) -> bytes:
    buffer = io.BytesIO()
    image = Image.new("RGB", (size, size), colour)
    image.putpixel((0, 0), (colour[2], colour[0], colour[1]))
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _build(root, monkeypatch_chdir=None):
    photos = root / "photos"
    photos.mkdir(parents=True)
    for i, colour in enumerate(COLOURS):
        (photos / f"{i}.png").write_bytes(_png(colour))
    (root / "secret.png").write_bytes(_png((1, 2, 3)))
    (photos / "link.png").symlink_to(root / "secret.png")  # points out of the image folder
    embed(EmbedConfig(sources=(str(photos),), out_dir=root / "emb", model=TINY, workers=0,
                      device="cpu", base=photos))  # fmt: skip
    build_index(IndexConfig(root / "emb", root / "index"))
    return root / "index"


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def served(index_dir):
    return Served(ServeConfig(indexes=(f"shapes={index_dir}",), device="cpu", runtime="torch"))


@pytest.fixture(scope="module")
def client(served):
    return _client(served)


def _client(served) -> TestClient:
    """The API over ``served``, asked as a browser on this machine asks (Host 127.0.0.1)."""
    return TestClient(create_app(served), base_url=LOOPBACK, raise_server_exceptions=False)


def _ids(payload):
    return [hit["id"] for hit in payload["hits"]]


def test_hits_equal_clipkit_search(client, index_dir):
    answer = client.get("/api/search", params={"q": "a red square", "k": 3})
    assert answer.status_code == 200, answer.text
    expected = search(SearchConfig(texts=("a red square",), index_dir=index_dir, k=3))
    hits = expected.results[0].hits
    assert _ids(answer.json()) == [hit.id for hit in hits]
    got = [hit["score"] for hit in answer.json()["hits"]]
    assert got == pytest.approx([hit.score for hit in hits], abs=1e-5)
    first = answer.json()["hits"][0]
    assert set(first) == {"rank", "score", "id", "uri", "kind", "text", "meta"}  # no server path


def test_more_like_this_and_an_uploaded_image_find_that_image(client):
    every = client.get("/api/search", params={"q": "a shape", "k": 10}).json()["hits"]
    blue = next(hit for hit in every if hit["uri"].endswith("2.png"))
    by_row = client.post("/api/search", json={"rows": [blue["id"]], "k": 2})
    assert by_row.status_code == 200, by_row.text
    assert by_row.json()["hits"][0]["id"] == blue["id"]
    assert by_row.json()["hits"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    upload = client.post(
        "/api/search/images", files={"images": ("q.png", _png(COLOURS[2]), "image/png")}
    )
    assert upload.status_code == 200, upload.text
    assert upload.json()["hits"][0]["id"] == blue["id"]
    mixed = client.post(
        "/api/search", json={"texts": ["a red square"], "rows": [blue["id"]], "weights": [0, 1]}
    )
    assert mixed.json()["hits"][0]["id"] == blue["id"]  # the text weighs nothing


def test_embed_gives_unit_vectors_of_the_index_model(client, served, tiny_encoder):
    answer = client.post("/api/embed", json={"texts": ["a red square", "a blue circle"]})
    assert answer.status_code == 200, answer.text
    vectors = np.array(answer.json()["vectors"])
    assert vectors.shape == (2, tiny_encoder.embed_dim)
    assert np.linalg.norm(vectors, axis=1) == pytest.approx([1, 1], abs=1e-5)
    expected = tiny_encoder.encode_texts(["a red square", "a blue circle"]).numpy()
    assert vectors == pytest.approx(expected, abs=1e-5)
    assert answer.json()["fingerprint"] == tiny_encoder.fingerprint


def test_embed_takes_images_as_base64_and_gives_the_vectors_embed_stored(client, served):
    """An image sent to /api/embed gets the vector ``clipkit embed`` stored for that file."""
    import base64

    blue = _png(COLOURS[2])  # the bytes of photos/2.png
    answer = client.post(
        "/api/embed",
        json={
            "texts": ["a blue square"],
            "images": [base64.b64encode(blue).decode(),
                       "data:image/png;base64," + base64.b64encode(_png(COLOURS[0])).decode()],
        },
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    assert answer.json()["kinds"] == ["text", "image", "image"]
    vectors = np.array(answer.json()["vectors"])
    index = served.index("shapes")
    uris = index.loaded.rows.column("uri")
    stored = {uri: index.loaded.vectors_at([n])[0] for n, uri in enumerate(uris)}
    assert vectors[1] == pytest.approx(stored["2.png"], abs=1e-4)
    assert vectors[2] == pytest.approx(stored["0.png"], abs=1e-4)
    text_only = client.post("/api/embed", json={"texts": ["a blue square"]}).json()["vectors"]
    assert vectors[0] == pytest.approx(np.array(text_only[0]), abs=1e-5)


def test_indexes_health_and_openapi(client):
    [described] = client.get("/api/indexes").json()
    assert described["name"] == "shapes" and described["rows"] == 6 and described["model"] == TINY
    assert described["recall_at_10"] and described["problem"] == ""
    assert client.get("/api/health").json()["status"] == "ok"
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/search", "/api/embed", "/api/indexes", "/metrics"} <= set(paths)


def test_no_page_loads_anything_from_elsewhere(client):
    """FastAPI's /docs and /redoc load Swagger UI and ReDoc from a CDN: gone (the API is
    described by /openapi.json); the server's own page needs nothing remote."""
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        assert client.get(path).status_code == 404, path
    page = client.get("/").text + client.get("/page.js").text
    assert "https://" not in page and "http://" not in page


def test_metrics_count_requests_by_route_and_status(client):
    before = _count(client, "/api/search", "200")
    client.get("/api/search", params={"q": "x"})
    client.get("/api/search", params={"q": "y"})
    client.get("/api/search", params={"k": "0", "q": "z"})
    assert _count(client, "/api/search", "200") == before + 2
    assert _count(client, "/api/search", "422") >= 1


def _count(client, route, status):
    text = client.get("/metrics").text
    line = f'clipkit_requests_total{{route="{route}",status="{status}"}}'
    found = [row for row in text.splitlines() if row.startswith(line)]
    return float(found[0].split()[-1]) if found else 0.0


@pytest.mark.parametrize(
    ("request_args", "status"),
    [
        (("get", "/api/search", {"params": {"q": "x", "k": 0}}), 422),
        (("get", "/api/search", {"params": {"q": "x", "k": 1001}}), 422),
        (("get", "/api/search", {"params": {"q": "x" * 1001}}), 422),
        (("get", "/api/search", {"params": {"q": ""}}), 422),
        (("get", "/api/search", {}), 422),
        (("get", "/api/search", {"params": {"q": "x", "k": "many"}}), 422),
        (("get", "/api/search", {"params": {"q": "x", "index": "nope"}}), 404),
        (("post", "/api/search", {"json": {}}), 422),
        (("post", "/api/search", {"json": {"texts": ["a"], "weights": [1, 2]}}), 422),
        (("post", "/api/search", {"json": {"texts": ["a"], "weights": [-1]}}), 422),
        (("post", "/api/search", {"json": {"rows": ["no-such-row"]}}), 404),
        (("post", "/api/search", {"content": b"{not json", "headers": JSON}), 422),
        (("post", "/api/search", {"json": {"texts": ["a"] * 17}}), 422),
        (("post", "/api/search/images", {"files": {"images": ("x.png", b"no", "image/png")}}), 422),
        (("post", "/api/search/images", {"data": {"q": "a"}}), 422),
        (("post", "/api/embed", {"json": {"texts": []}}), 422),
        (("post", "/api/embed", {"json": {"images": ["not base64!"]}}), 422),
        (("post", "/api/embed", {"json": {"images": ["aGVsbG8="]}}), 422),  # not an image
        (("post", "/api/embed", {"json": {"images": ["eA=="] * (MAX_EMBED_IMAGES + 1)}}), 422),
        (("post", "/api/embed", {"json": {"texts": ["a"], "index": "nope"}}), 404),
        (("delete", "/api/search", {}), 405),
    ],
)  # fmt: skip
def test_bad_input_is_a_4xx_json_error_never_a_500(client, request_args, status):
    method, path, kwargs = request_args
    answer = getattr(client, method)(path, **kwargs)
    assert answer.status_code == status, answer.text
    assert "error" in answer.json() and "Traceback" not in answer.text


def test_an_oversized_body_and_a_decompression_bomb_are_refused(index_dir):
    config = ServeConfig(
        indexes=(str(index_dir),), device="cpu", runtime="torch", max_upload=4096,
        max_pixels=1000,
    )  # fmt: skip
    small = _client(Served(config))
    big = small.post(
        "/api/search/images", files={"images": ("big.png", b"\0" * 10_000, "image/png")}
    )
    assert big.status_code == 413, big.text
    bomb = small.post(
        "/api/search/images", files={"images": ("bomb.png", _png((9, 9, 9), size=100), "image/png")}
    )  # 10,000 pixels where 1,000 are allowed
    assert bomb.status_code == 422 and "pixel limit" in bomb.json()["error"], bomb.text


def test_images_that_would_take_too_much_memory_to_decode_are_refused_413(index_dir):
    """#37 D4: the decoded size counts, not the file's: a one-bit PNG of 2000 x 2000 is a few
    KB and decodes to 2000 x 2000 x 6 bytes (22.9 MB of 2**20 bytes, as the options count)."""
    config = ServeConfig(indexes=(str(index_dir),), device="cpu", runtime="torch",
                         max_decode=30 * 2**20)  # fmt: skip
    small = _client(Served(config))
    buffer = io.BytesIO()
    Image.new("1", (2000, 2000)).save(buffer, format="PNG")
    bomb = ("bomb.png", buffer.getvalue(), "image/png")
    assert len(bomb[1]) < 10_000
    one = small.post("/api/search/images", files=[("images", bomb)])
    assert one.status_code == 200, one.text
    two = small.post("/api/search/images", files=[("images", bomb), ("images", bomb)])
    assert two.status_code == 413, two.text
    assert "would take 46 MB" in two.json()["error"]  # 2 x 22.9
    assert "--max-decode-mb" in two.json()["hint"]
    as_json = {"images": [base64.b64encode(bomb[1]).decode()] * 2}
    assert small.post("/api/embed", json=as_json).status_code == 413
    assert MAX_EMBED_IMAGES < 64  # uploads per request: fewer than the 64 once allowed


def test_the_token_is_needed_everywhere_but_health(index_dir):
    config = ServeConfig(indexes=(str(index_dir),), device="cpu", runtime="torch", token=TOKEN)
    guarded = _client(Served(config))
    for path in ("/api/search?q=x", "/api/indexes", "/metrics", "/openapi.json", "/docs"):
        assert guarded.get(path).status_code == 401, path
        wrong = guarded.get(path, headers={"Authorization": "Bearer nope-nope-nope"})
        assert wrong.status_code == 401, path
    right = guarded.get("/api/search?q=x", headers={"Authorization": f"Bearer {TOKEN}"})
    assert right.status_code == 200, right.text
    guarded.cookies.set("clipkit_token", TOKEN)
    assert guarded.get("/api/indexes").status_code == 200
    guarded.cookies.clear()
    assert guarded.get("/api/health").status_code == 200


TRAVERSALS = [
    "/api/thumbnail/shapes/../../../../etc/passwd",
    "/api/thumbnail/shapes/..%2F..%2F..%2Fetc%2Fpasswd",
    "/api/thumbnail/shapes/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/api/thumbnail/shapes/%252e%252e%252fetc%252fpasswd",
    "/api/thumbnail/shapes/..%5c..%5cwindows%5cwin.ini",
    "/api/thumbnail/shapes/%2Fetc%2Fpasswd",
    "/api/thumbnail/shapes//etc/passwd",
    "/api/thumbnail/shapes/etc/passwd",
    "/api/thumbnail/../shapes/x",
    "/api/thumbnail/..%2Fshapes/x",
    "/api/thumbnail/%2e%2e/x",
    "/api/thumbnail/shapes/secret.png",
    "/api/thumbnail/shapes/..%2Fsecret.png",
    "/api/thumbnail/shapes/0.png",
    "/api/thumbnail/shapes/%00",
    "/api/thumbnail/shapes/photos%2F0.png",
    "/api/thumbnail/%2Ftmp/x",
    "/api/thumbnail/shapes/~root",
    "/api/thumbnail/shapes/file:%2F%2F%2Fetc%2Fpasswd",
    "/api/thumbnail/shapes/....%2F%2F....%2F%2Fetc%2Fpasswd",
    "/api/thumbnail/shapes/%c0%ae%c0%ae%2fetc%2fpasswd",
    "/api/thumbnail/C:%5cWindows%5cwin.ini/x",
    "/../../etc/passwd",
    "/api/../../etc/passwd",
    "/static/../../etc/passwd",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_no_path_from_a_request_reaches_the_file_system(client, path):
    answer = client.get(path)
    assert answer.status_code == 404, (path, answer.status_code, answer.text[:200])
    assert b"root:" not in answer.content


def test_a_thumbnail_is_made_once_and_a_symlink_out_of_the_folder_is_refused(
    client, served, monkeypatch
):
    hits = client.get("/api/search", params={"q": "a shape", "k": 10}).json()["hits"]
    inside = next(hit for hit in hits if hit["uri"].endswith("0.png"))
    first = client.get(f"/api/thumbnail/shapes/{inside['id']}")
    assert first.status_code == 200 and first.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(first.content)).size) <= 256
    reads = []
    import clipkit.serve.state as state

    monkeypatch.setattr(state, "read_bytes", lambda path: reads.append(path) or b"")
    again = client.get(f"/api/thumbnail/shapes/{inside['id']}")
    assert again.content == first.content and reads == []
    # link.png has the secret's content: its row names the link, which leads out of photos/
    linked = [hit for hit in hits if hit["uri"].endswith("link.png")]
    assert linked  # the link's own row, named by the link inside photos/
    for hit in linked:
        assert client.get(f"/api/thumbnail/shapes/{hit['id']}").status_code == 404


def test_concurrent_searches_share_index_calls_and_each_gets_its_own_hits(monkeypatch, index_dir):
    """Eight requests at once over two indexes and two k: one index call per (index, k)
    group at most, and every answer equal to the same search made alone."""
    import threading

    from clipkit.index.load import LoadedIndex
    from clipkit.serve import state

    monkeypatch.setattr(state, "SEARCH_WINDOW_S", 0.1)  # wide enough for all eight to join
    monkeypatch.setattr(Served, "_others_busy", lambda self: True)  # even the first waits
    served = Served(ServeConfig(indexes=(f"a={index_dir}", f"b={index_dir}"), device="cpu",
                                runtime="torch"))  # fmt: skip
    queries = [("a", "a red square", 2), ("b", "a green circle", 3), ("a", "yellow", 3),
               ("b", "purple", 2), ("a", "blue", 2), ("b", "red", 3), ("a", "green", 3),
               ("b", "a shape", 2)]  # fmt: skip
    alone = [served.search(name, texts=[q], k=k) for name, q, k in queries]
    sizes: list[int] = []
    original = LoadedIndex.search

    def counting(self, vectors, k, *more):
        sizes.append(len(vectors))
        return original(self, vectors, k, *more)

    monkeypatch.setattr(LoadedIndex, "search", counting)
    start = threading.Barrier(len(queries))
    together: dict[int, object] = {}

    def ask(n: int) -> None:
        name, q, k = queries[n]
        start.wait()
        together[n] = served.search(name, texts=[q], k=k)

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(len(queries))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(sizes) == len(queries) and len(sizes) <= 4 and max(sizes) == 2
    for n, expected in enumerate(alone):
        got = together[n]
        assert [h.id for h in got.hits] == [h.id for h in expected.hits]  # type: ignore[attr-defined]
        assert [h.score for h in got.hits] == pytest.approx(
            [h.score for h in expected.hits], abs=1e-5
        )  # type: ignore[attr-defined]
        assert got.query == expected.query  # type: ignore[attr-defined]


def test_served_batches_wait_only_while_another_call_is_in_progress(served):
    seen = []
    with served._working():
        seen.append(served._others_busy())
        with served._working():
            seen.append(served._others_busy())
        seen.append(served._others_busy())
    assert seen == [False, True, False] and not served._others_busy()


def test_an_index_changed_on_disk_is_picked_up_and_a_damaged_one_keeps_serving(tmp_path):
    index_dir = _build(tmp_path)
    served = Served(ServeConfig(indexes=(str(index_dir),), device="cpu", runtime="torch"))
    client = _client(served)
    assert client.get("/api/indexes").json()[0]["rows"] == 6
    (tmp_path / "photos" / "new.png").write_bytes(_png((5, 250, 250)))
    embed(EmbedConfig(sources=(str(tmp_path / "photos"),), out_dir=tmp_path / "emb", model=TINY,
                      workers=0, device="cpu"))  # fmt: skip
    build_index(IndexConfig(tmp_path / "emb", index_dir, update=True))
    assert client.get("/api/indexes").json()[0]["rows"] == 7
    upload = client.post(
        "/api/search/images", files={"images": ("q.png", _png((5, 250, 250)), "image/png")}
    )
    assert upload.json()["hits"][0]["uri"].endswith("new.png")

    meta = index_dir / "index.json"
    meta.write_text(meta.read_text()[:-20])  # damaged while serving
    os.utime(meta, ns=(1, 1))
    described = client.get("/api/indexes").json()[0]
    assert described["rows"] == 7 and "corrupt" in described["problem"]
    assert client.get("/api/search", params={"q": "x"}).status_code == 200


def test_an_index_replaced_file_by_file_is_served_once_it_is_whole(tmp_path):
    """#37 D6: the sidecar and vectors of a new build first (the set is not whole: the old
    index serves), then its row map: the next request serves the new index."""
    index_dir = _build(tmp_path)
    client = _client(Served(ServeConfig(indexes=(str(index_dir),), device="cpu",
                                        runtime="torch")))  # fmt: skip
    (tmp_path / "photos" / "new.png").write_bytes(_png((5, 250, 250)))
    embed(EmbedConfig(sources=(str(tmp_path / "photos"),), out_dir=tmp_path / "emb", model=TINY,
                      workers=0, device="cpu"))  # fmt: skip
    build_index(IndexConfig(tmp_path / "emb", tmp_path / "rebuilt"))
    for name in ("index.json", "index.faiss"):
        os.replace(tmp_path / "rebuilt" / name, index_dir / name)
    [described] = client.get("/api/indexes").json()
    assert described["rows"] == 6 and "damaged" in described["problem"]
    os.replace(tmp_path / "rebuilt" / "rows.parquet", index_dir / "rows.parquet")
    [described] = client.get("/api/indexes").json()
    assert described["rows"] == 7 and described["problem"] == ""


def test_a_row_map_damaged_in_place_keeps_the_last_good_load_serving(tmp_path):
    """#37 D7: a footer byte renames the ``uri`` column (same size, index.json untouched): the
    change is seen, the damage named; the load before it keeps answering; the CLI says
    "damaged" rather than a KeyError."""
    index_dir = _build(tmp_path)
    served = Served(ServeConfig(indexes=(str(index_dir),), device="cpu", runtime="torch"))
    client = _client(served)
    rows = index_dir / "rows.parquet"
    data = bytearray(rows.read_bytes())
    footer = len(data) - 8 - int.from_bytes(data[-8:-4], "little")  # Parquet: footer, length
    at = data.index(b"uri", footer)  # the first there: the schema's column name
    data[at : at + 3] = b"urj"
    with open(rows, "r+b") as handle:  # in place, as a disk error would
        handle.write(data)
    [described] = client.get("/api/indexes").json()
    assert described["rows"] == 6 and "damaged" in described["problem"]
    answer = client.get("/api/search", params={"q": "a red square"})
    assert answer.status_code == 200 and answer.json()["hits"][0]["uri"].endswith(".png")
    result = CliRunner().invoke(cli.app, ["search", "x", "--index", str(index_dir)])
    assert result.exit_code == 1 and "damaged" in result.stderr, result.output
    assert "KeyError" not in result.output


def test_a_reload_failing_in_any_way_keeps_the_index_served(tmp_path, monkeypatch):
    """Whatever a reload raises (not only clipkit's errors), /api/indexes still answers, with
    the reason, and searches go on from the last good load."""
    index_dir = _build(tmp_path)
    client = _client(Served(ServeConfig(indexes=(str(index_dir),), device="cpu",
                                        runtime="torch")))  # fmt: skip

    def broken(*_, **__):
        raise KeyError("uri")

    monkeypatch.setattr("clipkit.serve.state.load_index", broken)
    os.utime(index_dir / "index.json", ns=(1, 1))
    [described] = client.get("/api/indexes").json()
    assert described["rows"] == 6 and "KeyError" in described["problem"]
    assert client.get("/api/search", params={"q": "x"}).status_code == 200


def test_a_request_cut_off_by_the_stop_is_answered_503():
    """When the grace period after a stop runs out, uvicorn cancels the requests still
    running: each is answered 503 (not uvicorn's bare 500)."""
    from prometheus_client import CollectorRegistry, Counter, Histogram

    from clipkit.serve.app import GuardAndCount
    from clipkit.serve.hosts import host_rule

    registry = CollectorRegistry()
    running = asyncio.Event()

    async def stuck(scope, receive, send):
        running.set()
        await asyncio.Event().wait()  # a request that would never finish

    guard = GuardAndCount(stuck, token=None, hosts=host_rule("127.0.0.1", ()),
                          requests=Counter("r", "r", ["route", "status"], registry=registry),
                          latency=Histogram("l", "l", ["route"], registry=registry))  # fmt: skip
    sent = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def stop_while_running():
        scope = {"type": "http", "method": "GET", "path": "/api/search", "query_string": b"",
                 "headers": [(b"host", b"127.0.0.1")]}  # fmt: skip
        task = asyncio.create_task(guard(scope, receive, send))
        await running.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    # In a thread of its own: another test's browser may hold this thread's event loop
    runner = threading.Thread(target=asyncio.run, args=(stop_while_running(),))
    runner.start()
    runner.join(60)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 503
    assert json.loads(sent[1]["body"])["error"] == "The server is stopping."


def test_the_app_tells_the_server_when_it_has_stopped(served):
    stopped = []
    with TestClient(create_app(served, on_stop=lambda: stopped.append(True)), base_url=LOOPBACK):
        assert stopped == []
    assert stopped == [True]


def test_a_stopped_server_s_process_ends_even_with_a_thread_stuck(tmp_path):
    """``end_soon``: what the server calls once stopped; a thread stuck in a request (not a
    daemon: Python would wait for it at exit forever) does not keep the process alive."""
    script = (
        "import threading; from clipkit.serve.server import end_soon\n"
        "threading.Thread(target=threading.Event().wait).start()\n"
        "end_soon(0.1)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], timeout=120, capture_output=True)
    assert done.returncode == 1, done.stderr  # STOPPED_EXIT_CODE: ended by the bound


def test_a_damaged_index_at_start_is_a_clear_error(tmp_path, index_dir):
    broken = tmp_path / "broken"
    shutil.copytree(index_dir, broken)
    (broken / "index.faiss").write_bytes(b"garbage")
    with pytest.raises(InputError, match="index"):
        Served(ServeConfig(indexes=(str(broken),), device="cpu", runtime="torch"))


def test_preflight_refuses_bad_options_and_warns_of_an_open_address(index_dir, tmp_path):
    assert preflight(ServeConfig(indexes=(str(index_dir),))) == []
    [warning] = preflight(ServeConfig(indexes=(str(index_dir),), host="0.0.0.0"))
    assert "without a token" in warning and "--token" in warning
    assert preflight(ServeConfig(indexes=(str(index_dir),), host="0.0.0.0", token=TOKEN)) == []
    assert preflight(ServeConfig(indexes=(str(index_dir),), host="::1")) == []
    for bad, message in [
        ({"indexes": ()}, "No index"),
        ({"indexes": (str(index_dir), f"index={index_dir}")}, "Two indexes"),
        ({"indexes": (str(tmp_path),)}, "holds no index"),
        ({"indexes": (str(index_dir),), "token": "short"}, "shorter than 8"),
        ({"indexes": (str(index_dir),), "port": 0}, "--port"),
        ({"indexes": (str(index_dir),), "processes": 0}, "--processes"),
        ({"indexes": (str(index_dir),), "processes": 65}, "--processes"),
    ]:
        with pytest.raises(UsageError, match=message):
            preflight(ServeConfig(**bad))
    config = ServeConfig(indexes=(f"a={index_dir}",), token=TOKEN, processes=3, max_upload=9)
    assert from_environment(to_environment(config)) == config  # what worker processes read


def test_the_command_passes_its_options_and_warns(monkeypatch, index_dir):
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(variable, raising=False)  # restored after the test
    monkeypatch.setenv("MKL_NUM_THREADS", "3")  # the user's own value is kept
    seen = {}
    monkeypatch.setattr(
        "clipkit.serve.server.run", lambda config, say: seen.setdefault("c", config)
    )
    result = CliRunner().invoke(
        cli.app,
        ["serve", "--index", f"mine={index_dir}", "--host", "0.0.0.0", "--port", "9000",
         "--processes", "3"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    config = seen["c"]
    assert config.indexes == (f"mine={index_dir}",) and config.port == 9000
    assert config.processes == 3
    assert "Warning: Serving on 0.0.0.0 without a token" in " ".join(result.stderr.split())
    # requests run in parallel: each one's math runs on one thread (benchmarks/bench_serve.py)
    assert os.environ["OMP_NUM_THREADS"] == os.environ["OPENBLAS_NUM_THREADS"] == "1"
    assert os.environ["MKL_NUM_THREADS"] == "3"
    missing = CliRunner().invoke(cli.app, ["serve", "--index", "nowhere"])
    assert missing.exit_code == 2 and "holds no index" in missing.stderr


def _start(index_dir, *options: str) -> tuple[subprocess.Popen, int]:
    """The console script serving ``index_dir`` on a free loopback port, once it answers."""
    port = free_port()
    script = Path(sys.executable).parent / "clipkit"
    server = subprocess.Popen(
        [str(script), "serve", "--index", str(index_dir), "--port", str(port), "--runtime",
         "torch", "--device", "cpu", *options],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2):
                return server, port
        except OSError:
            if server.poll() is not None:
                raise AssertionError(server.communicate()[1]) from None
            if time.monotonic() > deadline:
                server.kill()
                raise AssertionError("the server did not start in 60 s") from None
            time.sleep(0.2)


def _wait_until_refused(port: int, server: subprocess.Popen, seconds: float = 60) -> None:
    """Wait until connections to ``port`` are refused: the server has begun to shut down."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        except ConnectionRefusedError:
            return
        assert server.poll() is None, "the server exited with a request in flight"
        assert time.monotonic() < deadline, f"still listening {seconds} s after SIGTERM"
        time.sleep(0.01)


@pytest.mark.e2e
def test_the_real_server_answers_and_stops_cleanly_on_sigterm(index_dir):
    """The console script on a free loopback port: health, a search, then SIGTERM while a
    request is in flight: that request is answered, then the server exits 0."""
    server, port = _start(index_dir)
    base = f"http://127.0.0.1:{port}"
    try:
        with urllib.request.urlopen(f"{base}/api/search?q=a+red+square&k=2", timeout=10) as answer:
            assert len(json.load(answer)["hits"]) == 2
        rebound = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        rebound.request("GET", "/api/search?q=x", headers={"Host": f"evil.example:{port}"})
        refused = rebound.getresponse()
        assert refused.status == 400 and "evil.example" in json.load(refused)["error"]
        rebound.close()
        # SIGTERM during a request: its headers sent, the body after the server stopped listening
        body = json.dumps({"texts": ["a blue circle"], "k": 3}).encode()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
            connection.sendall(
                b"POST /api/search HTTP/1.1\r\nHost: localhost\r\n"
                b"Content-Type: application/json\r\nExpect: 100-continue\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
            )
            # the server answers 100 Continue once the endpoint waits for the body: in flight
            assert connection.recv(64).startswith(b"HTTP/1.1 100 Continue"), "no 100 Continue"
            server.send_signal(signal.SIGTERM)
            _wait_until_refused(port, server)  # shutting down, and so no longer listening
            # A server that does not wait for its requests exits in 0.1 s from here; this one
            # must wait (up to GRACE_S, 10 s) for the body it has not had yet.
            with pytest.raises(subprocess.TimeoutExpired):
                server.wait(timeout=2)
            connection.sendall(body)
            reply = b""
            while chunk := connection.recv(65536):
                reply += chunk
        head, _, payload = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), reply
        assert len(json.loads(payload)["hits"]) == 3  # the request finished
        _, errors = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
    assert server.returncode == 0, errors
    assert "Listening on http://127.0.0.1:" in errors and "Traceback" not in errors


@pytest.mark.e2e
def test_worker_processes_share_the_port_and_sum_their_metrics(index_dir):
    """--processes 2: two processes answer; /metrics (from whichever answers) counts every
    request of both; SIGTERM stops them all, exit 0."""
    server, port = _start(index_dir, "--processes", "2")
    base = f"http://127.0.0.1:{port}"
    try:
        children = subprocess.run(
            ["ps", "--ppid", str(server.pid), "-ww", "-o", "args="], capture_output=True, text=True
        ).stdout
        assert children.count("--multiprocessing-fork") == 2, children
        for n in range(24):  # a new connection each: the kernel hands them to both
            with urllib.request.urlopen(f"{base}/api/search?q=shape+{n}&k=2", timeout=10) as got:
                assert len(json.load(got)["hits"]) == 2
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as answer:
            metrics = answer.read().decode()
        line = 'clipkit_requests_total{route="/api/search",status="200"}'
        [count] = [row.split()[-1] for row in metrics.splitlines() if row.startswith(line)]
        assert float(count) == 24
        server.send_signal(signal.SIGTERM)
        _, errors = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
    assert server.returncode == 0, errors
    assert "with 2 processes" in errors and "Traceback" not in errors


def test_another_host_name_is_refused_everywhere(served):
    """D3 of issue #37: any Host was answered, what DNS rebinding needs to let a web page read
    a local server."""
    client = TestClient(create_app(served), raise_server_exceptions=False)  # Host: testserver
    for path in ("/", "/api/health", "/api/search?q=a+red+square", "/api/indexes", "/metrics"):
        refused = client.get(path, headers={"Host": "evil.example:8000"})
        assert refused.status_code == 400, path
        assert refused.json()["error"] == "This server does not answer to the host 'evil.example'."
        assert "--allowed-host" in refused.json()["hint"]
        assert client.get(path, headers={"Host": "127.0.0.1:8000"}).status_code == 200, path
    assert client.get("/api/indexes").status_code == 400  # "testserver" is no name of ours


def test_weights_are_checked_as_the_cli_checks_them(client):
    """D2 of issue #37: Infinity and 1e308 answered 500, form inf too, NaN was reported as a
    count mismatch; the same rules and a 422 now, and any finite size works."""
    plain = client.get("/api/search", params={"q": "a red square", "k": 3}).json()["hits"]
    for weight in (b"1e308", b"1e20", b"1e-10"):
        body = b'{"texts": ["a red square"], "k": 3, "weights": [' + weight + b"]}"
        found = client.post("/api/search", content=body, headers=JSON)
        assert found.status_code == 200, (weight, found.text)
        assert _ids(found.json()) == [hit["id"] for hit in plain]
    for weight in (b"Infinity", b"-Infinity", b"NaN"):
        body = b'{"texts": ["a red square"], "weights": [' + weight + b"]}"
        refused = client.post("/api/search", content=body, headers=JSON)
        assert refused.status_code == 422 and "must be finite" in refused.json()["error"], weight
    image = {"images": ("x.png", _png((200, 30, 30)), "image/png")}
    form = client.post("/api/search/images", files=image, data={"weights": "inf"})
    assert form.status_code == 422 and "must be finite" in form.json()["error"]


def test_thumbnails_are_served_when_everything_ran_in_one_folder(tmp_path, monkeypatch):
    """D8 of issue #37: `embed`, `index` and `serve` run from the same folder recorded that
    folder as the base, which the thumbnail route read as "no image folder": every one 404."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos").mkdir()
    for i, colour in enumerate(COLOURS):
        (tmp_path / "photos" / f"{i}.png").write_bytes(_png(colour))
    embed(EmbedConfig(sources=("photos",), out_dir="emb", model=TINY, workers=0, device="cpu"))
    build_index(IndexConfig("emb", "index"))
    client = _client(Served(ServeConfig(indexes=("index",), device="cpu", runtime="torch")))
    hits = client.get("/api/search", params={"q": "a red square", "k": 3}).json()["hits"]
    assert hits and all(hit["uri"].startswith("photos/") for hit in hits)
    for hit in hits:
        shown = client.get(f"/api/thumbnail/index/{hit['id']}")
        assert shown.status_code == 200 and shown.headers["content-type"] == "image/jpeg"
