"""Self-contained HTML reports: inline thumbnails, no network resources, every text escaped."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from clipkit.atomic import atomic_path
from clipkit.decode import DecodeError, decode_image
from clipkit.pipeline import read_bytes
from clipkit.search import SearchResult

THUMBNAIL = 192
_STYLE = """
body{font:14px system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:20px}h2{font-size:16px;margin-top:28px}
.grid{display:flex;flex-wrap:wrap;gap:12px}
.card{width:200px;background:#fff;border:1px solid #ddd;border-radius:6px;padding:6px}
.card img{width:192px;height:192px;object-fit:contain;background:#eee;display:block}
.text{height:192px;overflow:auto;background:#f3f3f3;padding:6px;box-sizing:border-box}
.meta{font-size:12px;color:#555;word-break:break-all;margin-top:4px}
.score{font-weight:600;color:#111}
"""


def thumbnail_uri(path: str, size: int = THUMBNAIL) -> str | None:
    """A ``data:`` URI holding a JPEG thumbnail of an image file, or None if unreadable."""
    try:
        image = decode_image(read_bytes(path), min_side=size)
    except DecodeError:
        return None
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def write_search_gallery(result: SearchResult, path: Path) -> Path:
    """One section per query, one card per hit (thumbnail or text, score, rank, uri)."""
    sections = []
    for query in result.results:
        cards = []
        for hit in query.hits:
            if hit.kind == "image":
                uri = thumbnail_uri(hit.uri)
                body = (f'<img src="{uri}" alt="{html.escape(hit.uri)}">' if uri
                        else '<div class="text">image unreadable</div>')  # fmt: skip
            else:
                body = f'<div class="text">{html.escape(hit.text or "")}</div>'
            cards.append(
                f'<div class="card" data-rank="{hit.rank}">{body}<div class="meta">'
                f'<span class="score">#{hit.rank} · {hit.score:.4f}</span><br>'
                f"{html.escape(hit.uri)}</div></div>"
            )
        sections.append(
            f'<h2>{html.escape(query.query)}</h2><div class="grid">{"".join(cards)}</div>'
        )
    page = (
        '<!doctype html><html><head><meta charset="utf-8"><title>clipkit search</title>'
        f"<style>{_STYLE}</style></head><body><h1>clipkit search</h1>"
        f"<p>model {html.escape(result.model)} · source {html.escape(result.source)}</p>"
        f"{''.join(sections)}</body></html>"
    )
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path
