"""The page of ``clipkit serve`` in headless Chromium against the real server on a loopback
port: a query shows its results with loaded thumbnails, "more like this" and an uploaded image
search by example, hostile captions show as text and run nothing, no console errors, nothing
remote; with a token, the login form sets the cookie that lets the page in."""

from __future__ import annotations

import csv
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import uvicorn
from PIL import Image

from clipkit.embed import EmbedConfig, embed
from clipkit.index import IndexConfig, build_index
from clipkit.serve.app import create_app
from clipkit.serve.config import ServeConfig
from clipkit.serve.state import Served
from tests.helpers import TINY, free_port

expect = pytest.importorskip("playwright.sync_api").expect
TOKEN = "a-long-enough-secret"
HOSTILE = [
    '<img src=x onerror="alert(1)">',
    "<script>alert(2)</script>",
    '" onmouseover="alert(3)',
    "a plain caption & <b>bold</b>",
]
COLOURS = [(220, 20, 20), (20, 200, 30), (20, 30, 220), (240, 220, 10)]
DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.fixture(scope="module")
def hostile_index(tmp_path_factory) -> Path:
    """Four images whose captions (from a table embedded after the folder) are hostile."""
    root = tmp_path_factory.mktemp("page")
    photos = root / "photos"
    photos.mkdir()
    for i, colour in enumerate(COLOURS):
        Image.new("RGB", (64, 64), colour).save(photos / f"{i}.png")
    with (root / "captions.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption"])
        writer.writerows((f"photos/{i}.png", text) for i, text in enumerate(HOSTILE))
    here = os.getcwd()
    os.chdir(root)
    try:
        for source in ("photos", "captions.csv"):
            embed(EmbedConfig(sources=(source,), out_dir=root / "emb", model=TINY, workers=0,
                              device="cpu", kind="image"))  # fmt: skip
    finally:
        os.chdir(here)
    build_index(IndexConfig(root / "emb", root / "index"))
    return root / "index"


@contextmanager
def live(config: ServeConfig) -> Iterator[str]:
    """The real server (uvicorn) in a thread on a free loopback port; its base URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(Served(config)), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _open(browser, base):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    seen = {"errors": [], "remote": [], "dialogs": []}
    page.on("console", lambda m: seen["errors"].append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: seen["errors"].append(f"page error: {e}"))
    page.on("dialog", lambda d: (seen["dialogs"].append(d.message), d.dismiss()))

    def only_this_server(route):
        if route.request.url.startswith(base):
            route.continue_()
        else:
            seen["remote"].append(route.request.url)
            route.abort()

    page.route("**/*", only_this_server)
    return page, seen


def _wait(condition, seconds: float = 15) -> None:
    """Poll from Python: the page's CSP forbids the string evaluation wait_for_function uses."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _loaded_images(page) -> bool:
    return page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")


@pytest.mark.e2e
def test_the_page_searches_shows_thumbnails_and_runs_no_caption(browser, hostile_index, tmp_path):
    config = ServeConfig(indexes=(f"shapes={hostile_index}",), device="cpu", runtime="torch")
    with live(config) as base:
        page, seen = _open(browser, base)
        page.goto(base + "/")
        page.wait_for_selector("#index option", state="attached")
        page.fill("#query", "a red square")
        page.keyboard.press("Enter")
        expect(page.locator(".card")).to_have_count(4)
        _wait(lambda: _loaded_images(page))
        shown = page.inner_text("#results")
        for text in HOSTILE:
            assert f"caption: {text}" in shown  # as text, escaped by construction
        page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)
        if os.environ.get("CLIPKIT_UPDATE_DOCS"):
            DOCS.mkdir(exist_ok=True)
            shutil.copy(tmp_path / "serve.png", DOCS / "serve-page.png")

        last = page.locator(".card").nth(3)
        wanted = last.get_attribute("data-id")
        last.locator("button.more").click()
        expect(page.locator(".card").first).to_have_attribute("data-id", wanted)
        assert "more like" in page.inner_text("#status")

        upload = tmp_path / "query.png"
        Image.new("RGB", (64, 64), COLOURS[2]).save(upload)
        page.fill("#query", "")
        page.set_input_files("#images", str(upload))
        expect(page.locator("#status")).to_have_text(re.compile(r"^4 results for image 1"))
        first = page.locator(".card").first.inner_text()
        assert "2.png" in first

        page.keyboard.press("Escape")
        page.locator("body").click()
        page.keyboard.press("/")
        assert page.evaluate("document.activeElement.id") == "query"
        assert seen["errors"] == [] and seen["remote"] == [] and seen["dialogs"] == []
        page.close()


@pytest.mark.e2e
def test_with_a_token_the_login_form_lets_the_page_in(browser, hostile_index):
    config = ServeConfig(indexes=(str(hostile_index),), device="cpu", runtime="torch", token=TOKEN)
    with live(config) as base:
        page, seen = _open(browser, base)
        answer = page.goto(base + "/")
        assert answer.status == 401 and page.locator("form.login").count() == 1
        page.fill("input[name=token]", "wrong-wrong-wrong")
        page.click("button[type=submit]")
        assert page.locator("form.login").count() == 1  # still out
        page.fill("input[name=token]", TOKEN)
        page.click("button[type=submit]")
        page.wait_for_selector("#index option", state="attached")
        cookies = {c["name"]: c for c in page.context.cookies()}
        cookie = cookies["clipkit_token"]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        page.fill("#query", "a shape")
        page.keyboard.press("Enter")
        expect(page.locator(".card")).to_have_count(4)
        assert seen["remote"] == [] and seen["dialogs"] == []
        page.close()
