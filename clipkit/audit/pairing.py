"""How the rows of an embeddings folder pair up into image–caption pairs for ``clipkit audit``:
by ``.txt`` sidecar, and by the links a table's rows record between an image and its caption."""

from __future__ import annotations

from pathlib import Path

from clipkit import store


def stored_pairs(
    rows: store.VectorBlock,
) -> tuple[list[tuple[int, int]], list[tuple[str, str, str]]]:
    """(image row, text row) pairs of an embeddings folder's rows, and the images without one.

    An image pairs with the text of its ``.txt`` sidecar (for a WebDataset member, the
    sample's ``.txt`` member), and with every caption row that records the image's uri in a
    pass-through column (what ``clipkit embed`` writes for a table of image paths and
    captions, whether the table was embedded before or after the images). A caption reached
    both ways counts once.
    """
    row_of = {uri: n for n, uri in enumerate(rows.uris)}
    image_of = {
        uri: n
        for n, (uri, kind) in enumerate(zip(rows.uris, rows.kinds, strict=True))
        if kind == "image"
    }
    linked: dict[int, list[int]] = {}
    for values in rows.meta.values():
        for t, value in enumerate(values):
            if rows.kinds[t] == "text" and value in image_of:
                linked.setdefault(image_of[value], []).append(t)
    picked, failures = [], []
    for n, (uri, kind) in enumerate(zip(rows.uris, rows.kinds, strict=True)):
        if kind != "image":
            continue
        sidecar = row_of.get(str(Path(uri).with_suffix(".txt")))
        texts = [sidecar] if sidecar is not None and rows.kinds[sidecar] == "text" else []
        texts += sorted(linked.get(n, []))
        seen: set[str] = set()
        for t in texts:
            if rows.ids[t] not in seen:  # the same caption, by sidecar and by link
                seen.add(rows.ids[t])
                picked.append((n, t))
        if not texts:
            sidecar_name = Path(uri).with_suffix(".txt").name
            failures.append(
                (uri, "caption", f"no text row for {sidecar_name} and no caption row naming it")
            )
    return picked, failures
