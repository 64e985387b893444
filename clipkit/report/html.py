"""Self-contained HTML reports: inline thumbnails, no network resources, every text escaped."""

from __future__ import annotations

import base64
import html
import io
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from clipkit.audit.run import AuditResult, PairAudit
from clipkit.infra.atomic import atomic_path
from clipkit.infra.shown import printable
from clipkit.inputs.decode import DecodeError, decode_image
from clipkit.inputs.files import read_bytes
from clipkit.plots import plot_confusion, plot_score_histogram
from clipkit.search.run import SearchResult
from clipkit.zeroshot.run import UNKNOWN, Prediction, ZeroShotResult

THUMBNAIL = 192


def _escape(text: str) -> str:
    """``text`` as HTML text or attribute value: markup escaped, control characters shown."""
    return html.escape(printable(text))


_STYLE = """
body{font:14px system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:20px}h2{font-size:16px;margin-top:28px}
.grid{display:flex;flex-wrap:wrap;gap:12px}
.card{width:200px;background:#fff;border:1px solid #ddd;border-radius:6px;padding:6px}
.card img{width:192px;height:192px;object-fit:contain;background:#eee;display:block}
.text{height:192px;overflow:auto;background:#f3f3f3;padding:6px;box-sizing:border-box}
.meta{font-size:12px;color:#555;overflow-wrap:anywhere;margin-top:4px}
.score{font-weight:600;color:#111}
table.data{border-collapse:collapse;background:#fff}
table.data td,table.data th{border:1px solid #ddd;padding:3px 8px;text-align:right}
table.data td:first-child,table.data th:first-child{text-align:left}
.wrong{color:#b00020}
.card.wide{width:440px}.card.wide h2{margin-top:4px}
.card img.figure{width:100%;height:auto;object-fit:contain}
"""
GALLERY_IMAGES = 8  # thumbnails per label and per confusion
GALLERY_LABELS = 50  # label galleries shown, most frequent first


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
    """One section per query, one card per hit (thumbnail or text, score, rank, uri and the
    row's pass-through metadata)."""
    sections = []
    for query in result.results:
        cards = []
        for hit in query.hits:
            if hit.kind == "image":
                uri = thumbnail_uri(hit.path or hit.uri)
                body = (
                    f'<img src="{uri}" alt="{_escape(hit.uri)}">'
                    if uri
                    else '<div class="text">image unreadable</div>'
                )
            else:
                body = f'<div class="text">{_escape(hit.text or "")}</div>'
            passed = "".join(
                f"<br>{_escape(name)}: {_escape(value)}" for name, value in hit.meta.items()
            )
            cards.append(
                f'<div class="card" data-rank="{hit.rank}">{body}<div class="meta">'
                f'<span class="score">#{hit.rank} · {hit.score:.4f}</span><br>'
                f"{_escape(hit.uri)}{passed}</div></div>"
            )
        sections.append(f'<h2>{_escape(query.query)}</h2><div class="grid">{"".join(cards)}</div>')
    intro = f"<p>model {_escape(result.model)} · source {_escape(result.source)}</p>"
    return _write_page(path, "clipkit search", intro + "".join(sections))


def write_zeroshot_report(result: ZeroShotResult, path: Path) -> list[Path]:
    """An HTML page (and, with ground truth, a confusion-matrix PNG beside it).

    The page holds the summary, the per-class table, the heatmap (inline), thumbnails of the
    worst confusions (most confident mistakes first) and of each label's most confident images.
    """
    parts = [_zeroshot_summary(result)]
    written = []
    if result.metrics is not None:
        png = plot_confusion(
            result.labels, result.metrics.confusion, path.with_name(path.stem + ".confusion.png")
        )
        written.append(png)
        encoded = base64.b64encode(png.read_bytes()).decode("ascii")
        parts += [
            _class_table(result),
            "<h2>Confusion matrix</h2>",
            f'<img src="data:image/png;base64,{encoded}" alt="confusion matrix" '
            'style="max-width:100%">',
            _worst_confusions(result),
        ]
    parts.append(_label_galleries(result))
    if result.failures:
        items = "".join(
            f"<li>{_escape(uri)}: {_escape(stage)}: {_escape(error)}</li>"
            for uri, stage, error in result.failures
        )
        parts.append(f"<h2>Skipped ({len(result.failures)})</h2><ul>{items}</ul>")
    return [_write_page(path, "clipkit zeroshot", "".join(parts)), *written]


def _zeroshot_summary(result: ZeroShotResult) -> str:
    facts = [
        f"model {result.model}",
        f"source {result.source} ({result.input_kind})",
        f"{len(result.predictions)} images",
        f"{len(result.labels)} labels",
        f"{result.prompts} prompts ({result.templates} templates)",
        f"{len(result.failures)} skipped",
    ]
    if result.rejection is not None:
        r = result.rejection
        facts.append(f"{r.rejected} unknown (top probability < {r.threshold:.4f}, {r.method})")
    if result.metrics is not None:
        m = result.metrics
        facts.append(
            f"top-1 {m.top1:.1%} · top-{m.k} {m.topk:.1%} · "
            f"mean per-class recall {m.mean_per_class_recall:.1%}"
        )
    notes = "".join(f"<p>{_escape(note)}</p>" for note in result.notes)
    return "<p>" + " · ".join(_escape(fact) for fact in facts) + "</p>" + notes


def _class_table(result: ZeroShotResult) -> str:
    assert result.metrics is not None

    def cell(value: float | None) -> str:
        return "–" if value is None else f"{value:.3f}"

    rows = "".join(
        f"<tr><td>{_escape(c.label)}</td><td>{c.support}</td><td>{c.predicted}</td>"
        f"<td>{cell(c.precision)}</td><td>{cell(c.recall)}</td></tr>"
        for c in result.metrics.classes
    )
    return (
        '<h2>Per class</h2><table class="data"><tr><th>label</th><th>images</th>'
        f"<th>predicted</th><th>precision</th><th>recall</th></tr>{rows}</table>"
    )


def _worst_confusions(result: ZeroShotResult) -> str:
    assert result.metrics is not None
    labels, sections = result.labels, []
    for true, predicted, count in result.metrics.worst_confusions():
        wrong = [
            p
            for p in result.predictions
            if p.target == labels[true] and p.top[0][0] == labels[predicted]
        ]
        wrong.sort(key=lambda p: -p.confidence)
        sections.append(
            f"<h3>{_escape(labels[true])} → {_escape(labels[predicted])} ({count})</h3>"
            + _cards(wrong)
        )
    body = "".join(sections) or "<p>No confusions: every image got its true label.</p>"
    return f"<h2>Worst confusions</h2>{body}"


def _label_galleries(result: ZeroShotResult) -> str:
    sections, by_label = [], defaultdict(list)
    for prediction in result.predictions:
        by_label[prediction.label].append(prediction)
    for label, count in result.distribution[:GALLERY_LABELS]:
        chosen = by_label[label]
        # unknown: the least confident first (the clearest rejections); labels: the most
        chosen.sort(key=lambda p: p.confidence if label == UNKNOWN else -p.confidence)
        if chosen:
            sections.append(f"<h3>{_escape(label)} ({count})</h3>" + _cards(chosen))
    hidden = max(len(result.distribution) - GALLERY_LABELS, 0)
    more = f"<p>{hidden} less frequent labels not shown.</p>" if hidden else ""
    return f"<h2>Predictions by label</h2>{''.join(sections)}{more}"


def _cards(predictions: Sequence[Prediction]) -> str:
    """The first ``GALLERY_IMAGES`` predictions as a grid of cards."""
    cards = "".join(_card(p) for p in predictions[:GALLERY_IMAGES])
    return f'<div class="grid">{cards}</div>'


def _card(prediction: Prediction) -> str:
    uri = thumbnail_uri(prediction.path or prediction.uri)
    body = (
        f'<img src="{uri}" alt="{_escape(prediction.uri)}">'
        if uri
        else '<div class="text">image unavailable</div>'
    )
    top = "<br>".join(f"{_escape(label)} {p:.3f}" for label, p in prediction.top[:3])
    truth = ""
    if prediction.target is not None:
        mark = "" if prediction.target == prediction.top[0][0] else ' class="wrong"'
        truth = f"<span{mark}>true: {_escape(prediction.target)}</span><br>"
    return (
        f'<div class="card">{body}<div class="meta">{truth}'
        f'<span class="score">{top}</span><br>{_escape(prediction.uri)}</div></div>'
    )


def write_audit_report(result: AuditResult, path: Path, *, top: int = 50) -> list[Path]:
    """An HTML page with the flag rule, the score histogram (also a PNG beside it), the worst
    flagged pairs (thumbnail, caption, suggestion, scores) and the duplicates found."""
    c = result.calibration
    statistic = c.statistic
    line: float | None = c.threshold
    if statistic == "probability":  # drawn over the mismatch: the least suspicious flag's
        statistic = "mismatch"
        line = min((p.mismatch for p in result.flagged), default=None)
    png = plot_score_histogram(
        c.histogram, line, statistic, path.with_name(path.stem + ".histogram.png")
    )
    encoded = base64.b64encode(png.read_bytes()).decode("ascii")
    facts = [
        f"model {result.model}",
        f"source {result.source}",
        f"{len(result.pairs)} pairs",
        f"{len(result.flagged)} flagged",
        f"{len(result.failures)} skipped",
        f"{result.long_captions} long captions ({result.long_caption_mode})",
    ]
    rows = "".join(
        f"<tr><td>{name}</td>" + "".join(f"<td>{q[level]:.3f}</td>" for level in q) + "</tr>"
        for name, q in c.quantiles.items()
    )
    flagged = result.flagged
    parts = [
        "<p>" + " · ".join(_escape(fact) for fact in facts) + "</p>",
        f"<p>{_escape(result.headline())}</p>",
        '<table class="data"><tr><th>cosine</th><th>5%</th><th>25%</th><th>50%</th>'
        f"<th>75%</th><th>95%</th></tr>{rows}</table>",
        f'<img src="data:image/png;base64,{encoded}" alt="score histogram" style="max-width:100%">',
        f"<h2>Flagged pairs ({len(flagged)}; worst {min(top, len(flagged))} shown)</h2>",
        f'<div class="grid">{"".join(_audit_card(p) for p in flagged[:top])}</div>',
        _duplicates_section(result),
    ]
    if result.failures:
        items = "".join(
            f"<li>{_escape(uri)}: {_escape(stage)}: {_escape(error)}</li>"
            for uri, stage, error in result.failures
        )
        parts.append(f"<h2>Skipped ({len(result.failures)})</h2><ul>{items}</ul>")
    return [_write_page(path, "clipkit audit", "".join(parts)), png]


def _audit_card(pair: PairAudit) -> str:
    uri = thumbnail_uri(pair.image_path or pair.image)
    body = (
        f'<img src="{uri}" alt="{_escape(pair.image)}">'
        if uri
        else '<div class="text">image unavailable</div>'
    )
    suggestion = _escape(pair.suggested_caption or "–")
    return (
        f'<div class="card">{body}<div class="meta"><b>caption:</b> {_escape(pair.caption)}'
        f"<br><b>suggested:</b> {suggestion}<br>"
        f'<span class="score">p(mismatched) {pair.probability:.2f} · mismatch '
        f"{pair.mismatch:.3f} · cosine {pair.cosine:.3f} · rank "
        f"{pair.caption_rank}/{pair.image_rank}</span><br>{_escape(pair.image)}</div></div>"
    )


def _duplicates_section(result: AuditResult, shown: int = 20) -> str:
    images = "".join(
        f"<li>{', '.join(_escape(f) for f in files)}: "
        f"{' | '.join(_escape(c) for c in captions)}</li>"
        for files, captions in result.duplicate_images[:shown]
    )
    captions = "".join(
        f"<li>{_escape(caption)}: {len(found)} images</li>"
        for caption, found in result.duplicate_captions[:shown]
    )
    return (
        f"<h2>Duplicates</h2><p>{len(result.duplicate_images)} identical images with "
        f"different captions</p><ul>{images}</ul><p>{len(result.duplicate_captions)} captions "
        f"on several different images</p><ul>{captions}</ul>"
    )


@dataclass(frozen=True)
class OverviewCard:
    """One card of an overview page: a title, a line of text, and files (HTML pages are
    linked relative to the page, PNG images are inlined, anything else is named)."""

    title: str
    text: str
    files: Sequence[Path]


def write_overview(path: Path, title: str, cards: Sequence[OverviewCard]) -> Path:
    """A page of cards that links the other reports (the quickstart's ``index.html``)."""
    rendered = []
    for card in cards:
        parts = [f"<h2>{_escape(card.title)}</h2><p>{_escape(card.text)}</p>"]
        for file in card.files:
            if file.suffix == ".html":
                href = Path(os.path.relpath(file, path.parent)).as_posix()
                parts.append(f'<p><a href="{_escape(href)}">{_escape(file.name)}</a></p>')
            elif file.suffix == ".png" and file.is_file():
                encoded = base64.b64encode(file.read_bytes()).decode("ascii")
                parts.append(
                    f'<img class="figure" src="data:image/png;base64,{encoded}" '
                    f'alt="{_escape(file.name)}">'
                )
            else:
                parts.append(f'<p class="meta">{_escape(str(file))}</p>')
        rendered.append(f'<div class="card wide">{"".join(parts)}</div>')
    return _write_page(path, title, f'<div class="grid">{"".join(rendered)}</div>')


def _write_page(path: Path, title: str, body: str) -> Path:
    page = (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{_escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body><h1>{_escape(title)}</h1>{body}</body></html>"
    )
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path
