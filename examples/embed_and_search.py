"""Embed a folder of images and captions, index it, and search it by text and by image.

    python examples/embed_and_search.py PHOTOS_DIR [--model clipkit-tiny:random]

Uses clipkit's Python API: the same services the `clipkit embed`, `index` and `search`
commands call. Without network, use a built-in model (or a checkpoint you trained).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from clipkit.embed import EmbedConfig, embed
from clipkit.index import IndexConfig, build_index
from clipkit.search import SearchConfig, search


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos", type=Path)
    parser.add_argument("--model", default="clipkit-tiny:random")
    parser.add_argument("--query", default="a photo of a dog")
    parser.add_argument("--work", type=Path, default=Path(tempfile.mkdtemp(prefix="clipkit-")))
    args = parser.parse_args()

    embedded = embed(
        EmbedConfig(
            sources=(str(args.photos),), out_dir=args.work / "emb", model=args.model, device="cpu"
        )
    )
    print(f"embedded {embedded.embedded}, skipped {embedded.skipped} -> {args.work / 'emb'}")

    index = build_index(IndexConfig(emb_dir=args.work / "emb", out_dir=args.work / "index"))
    print(
        f"index {index.info.factory}: {index.info.rows} rows, recall@10 "
        f"{index.info.recall_at_10['same_kind']}"
    )

    by_text = search(
        SearchConfig(texts=(args.query,), index_dir=args.work / "index", k=3, device="cpu")
    )
    first_image = next(
        p
        for p in sorted(args.photos.rglob("*"))
        if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"}
    )
    by_image = search(
        SearchConfig(images=(first_image,), index_dir=args.work / "index", k=3, device="cpu")
    )
    for result in (*by_text.results, *by_image.results):
        print(f"\n{result.query}")
        for hit in result.hits:
            print(f"  {hit.rank}. {hit.score:.3f}  {hit.uri}")


if __name__ == "__main__":
    main()
