"""Open an HTML file in headless Chromium (through Playwright) and report what a person would see.

Debian's ``chromium`` package is the browser (``.ci/run`` installs it when missing); Playwright
drives it, so no browser is ever downloaded. ``find_chromium`` returns None where neither is
available, and the tests that need one skip.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageStat

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
LOCAL_SCHEMES = ("file:", "data:", "about:")


def find_chromium() -> str | None:
    explicit = os.environ.get("CLIPKIT_CHROMIUM")
    if explicit:
        return explicit
    return next((found for name in CANDIDATES if (found := shutil.which(name))), None)


@dataclass
class Rendered:
    cards: int  # elements with class "card"
    errors: list[str] = field(default_factory=list)  # console errors, page errors, failed loads
    remote: list[str] = field(default_factory=list)  # requests that left the machine
    broken_images: int = 0  # <img> elements that did not decode
    screenshot: Path | None = None


def render(browser: Any, page_file: Path, screenshot: Path) -> Rendered:
    """Load ``page_file``, wait for it, and take a full-page screenshot."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    remote: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: errors.append(f"failed to load {r.url}"))

    def only_local(route: Any) -> None:
        if route.request.url.startswith(LOCAL_SCHEMES):
            route.continue_()
        else:  # a report must be self-contained: anything remote is a bug, never fetched
            remote.append(route.request.url)
            route.abort()

    page.route("**/*", only_local)
    page.goto(page_file.resolve().as_uri(), wait_until="load")
    broken = page.evaluate(
        "Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).length"
    )
    cards = page.locator(".card").count()
    page.screenshot(path=str(screenshot), full_page=True)
    page.close()
    return Rendered(cards, errors, remote, broken, screenshot)


def is_blank(screenshot: Path) -> bool:
    """True when (almost) every pixel has one colour: nothing rendered."""
    with Image.open(screenshot) as image:
        grey = image.convert("L")
        spread = ImageStat.Stat(grey).stddev[0]
        colours = grey.getcolors(maxcolors=1 << 16)
    return spread < 2.0 or (colours is not None and len(colours) < 4)


def split_words(browser: Any, page_file: Path, selector: str, width: int = 1280) -> list[str]:
    """The words inside ``selector`` elements that the page renders across two lines.

    Each whitespace-separated word is wrapped in a Range; a word cut by the line breaker has
    more than one client rectangle.
    """
    page = browser.new_page(viewport={"width": width, "height": 900})
    page.goto(page_file.resolve().as_uri(), wait_until="load")
    split = page.evaluate(
        """selector => {
        const split = [];
        for (const element of document.querySelectorAll(selector)) {
            const walker = document.createTreeWalker(element, NodeFilter.SHOW_TEXT);
            for (let node = walker.nextNode(); node; node = walker.nextNode()) {
                for (const match of node.data.matchAll(/\\S+/g)) {
                    const range = document.createRange();
                    range.setStart(node, match.index);
                    range.setEnd(node, match.index + match[0].length);
                    if (range.getClientRects().length > 1) split.push(match[0]);
                }
            }
        }
        return split;
    }""",
        selector,
    )
    page.close()
    return list(split)
