"""Helpers shared by several test modules: generated images, tar shards and embeddings, the
tiny model's spec, and reading an embeddings folder back. Test modules import from here, never
from each other."""

from __future__ import annotations

import io
import json
import os
import random
import socket
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
from PIL import Image

from clipkit import store
from clipkit.embed import EmbedConfig

TINY = "clipkit-tiny:random"


def make_images(folder: Path, count: int, *, start: int = 0, size=(40, 30)) -> list[Path]:
    """Distinct small images (seeded noise, so distinct bytes and content ids)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in range(start, start + count):
        pixels = np.random.default_rng(n).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        path = folder / (f"img{n:04d}.png" if n % 2 else f"img{n:04d}.jpg")
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def edit_image(path: Path, seed: int) -> None:
    """New bytes for an image file (other noise), so a new content id."""
    pixels = np.random.default_rng(1000 + seed).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def png_bytes(seed: int) -> bytes:
    """A small PNG of seeded noise, as bytes."""
    pixels = np.random.default_rng(seed).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_tar_shard(path: Path, samples: dict[str, dict[str, bytes]]) -> None:
    """A WebDataset shard: members ``KEY.EXT`` in key order, as img2dataset writes them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as archive:
        for key, members in samples.items():
            for extension, data in members.items():
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))


def tar_sample(n: int, caption: str | None = None) -> dict[str, bytes]:
    """One sample's members: a PNG, img2dataset's ``.json``, and a ``.txt`` caption if given."""
    members = {
        "png": png_bytes(n),
        "json": json.dumps({"url": f"https://example.com/{n}.png"}).encode(),
    }
    if caption is not None:
        members["txt"] = caption.encode()
    return members


def install_export(encoder, export: Path) -> Path:
    """Copy ``export`` (of ``encoder``) into the ONNX cache ``$CLIPKIT_ONNX_CACHE`` names now,
    as ``clipkit export -m SPEC`` leaves it: the folder by fingerprint, and the spec in
    ``specs.json``. Returns the cached folder."""
    import shutil

    from clipkit.models.exported import cached_export, remember_spec

    target = cached_export(encoder.fingerprint)
    shutil.copytree(export, target)
    remember_spec(encoder.spec, encoder.fingerprint)
    return target


def rows(out: Path) -> dict[str, dict]:
    """All rows of an embeddings folder, by id, read with plain pyarrow.dataset."""
    table = ds.dataset(str(out), format="parquet").to_table()
    return {row["id"]: row for row in table.to_pylist()}


def embed_config(sources, out, **kwargs) -> EmbedConfig:
    """An embed of ``sources`` into ``out`` with the tiny model on the CPU, in-process."""
    kwargs.setdefault("workers", 0)
    return EmbedConfig(
        sources=tuple(str(s) for s in sources), out_dir=out, model=TINY, device="cpu", **kwargs
    )


def clustered_embeddings(
    folder: Path, stamp: store.ModelStamp, count: int, clusters: int, dim: int
) -> np.ndarray:
    """Write ``count`` unit vectors around ``clusters`` centres as shards of 1,500 rows;
    returns them, (count, dim) float32, in row order."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((clusters, dim))
    points = centres[rng.integers(0, clusters, count)] + 0.35 * rng.standard_normal((count, dim))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    for shard, start in enumerate(range(0, count, 1500)):
        block = points[start : start + 1500].astype(np.float32)
        ids = [f"{i:08x}" for i in range(start, start + len(block))]
        columns = {"id": ids, "uri": ids, "kind": ["image"] * len(ids), "text": [None] * len(ids)}
        store.write_shard(store.shard_path(folder, shard), columns, block, stamp)
    return points.astype(np.float32)


WORDS = [
    "a",
    "photo",
    "of",
    "the",
    "dog",
    "cat",
    "red",
    "blue",
    "small",
    "large",
    "circle",
    "square",
    "triangle",
    "on",
    "in",
    "with",
    "grey",
    "background",
    "emoji",
    "cloud",
    "beach",
    "mountain",
    "café",
    "naïve",
    "über",
    "straße",
    "Ñandú",
    "déjà-vu",
    "don't",
    "it's",
    "we're",
    "I'll",
    "you've",
    "they'd",
    "3D",
    "1,000",
    "42",
    "x86_64",
    "e-mail",
    "C++",
    "#hashtag",
    "@user",
    "http://a.b/c?d=1",
]
PIECES = [
    "猫",
    "東京タワー",
    "Москва",
    "ελληνικά",
    "עברית",
    "العربية",
    "हिन्दी",
    "🙂",
    "🐶🐱",
    "👩\u200d👩\u200d👧",
    "🏳️\u200d🌈",
    "&amp;",
    "&lt;b&gt;bold&lt;/b&gt;",
    "&#39;quoted&#39;",
    "&amp;amp;",
    "&quot;x&quot;",
    "Ã©",
    "â€™",
    "\xa0",
    "\t",
    "\n",
    "   ",
    "\u200b",
    "ＡＢＣ",
    "ﬁ",
    "Å",
    "Å",
    "<start_of_text>",
    "<END_OF_TEXT>",
    "...",
    "!!!",
    "¿qué?",
    "½",
    "²",
    "Ⅻ",
]


def corpus(size: int = 1200, seed: int = 0) -> list[str]:
    """Texts for tokenizers: captions, Unicode and emoji, HTML entities, mixed case, runs of
    whitespace, empty strings, special tokens and texts longer than any context."""
    rng = random.Random(seed)
    texts = ["", " ", "\t\n", "A", "a" * 300, "word " * 200, "🙂" * 100]
    while len(texts) < size:
        parts = [
            rng.choice(WORDS if rng.random() < 0.7 else PIECES) for _ in range(rng.randint(1, 40))
        ]
        text = rng.choice((" ", "  ", "", "\t", " \n ")).join(parts)
        if rng.random() < 0.3:
            text = text.upper() if rng.random() < 0.5 else text.title()
        texts.append(text)
    return texts


def embed_args(source, out, *extra: str, workers: int = 0) -> list[str]:
    """``clipkit embed SOURCE... -o OUT`` with the tiny model on the CPU, and ``extra`` options
    (``source``: one path, or a list of them)."""
    sources = [source] if isinstance(source, (str, os.PathLike)) else source
    command = ["embed", *map(str, sources), "-o", str(out), "-m", TINY, "--device", "cpu"]
    return [*command, "--workers", str(workers), *extra]


def torchrun(*args: str, processes: int = 2) -> list[str]:
    """The command line that runs ``args`` under torchrun, on this machine, in ``processes``."""
    import sys

    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return [*launcher, "--nproc_per_node", str(processes), *args]


def free_port() -> int:
    """A TCP port free on the loopback interface now (for a server a test starts)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def train_config(shapes: Path, out: Path, **options):
    """A quick ``clipkit train`` on the session's shapes: clipkit-tiny, batch 16, no decode
    workers, 10 % validation; ``options`` override or add fields."""
    from clipkit.train.config import TrainConfig

    base = {"data": str(shapes / "data"), "out": str(out), "model": TINY,
            "batch_size": 16, "workers": 0, "val_split": 0.1}  # fmt: skip
    return TrainConfig(**{**base, **options})


def logged_steps(run_dir) -> list[dict]:
    """The ``kind: step`` records of a run's ``metrics.jsonl``."""
    lines = Path(run_dir, "metrics.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if record["kind"] == "step"]


def interrupt_and_resume(shapes: Path, out: Path, stop_at: int = 3, **options) -> None:
    """Train into ``out``, interrupted (as by Ctrl-C) after step ``stop_at``, then resume it."""
    from clipkit.train import train

    def stop(report):
        if report.stage == "train" and report.done == stop_at:
            raise KeyboardInterrupt

    assert train(train_config(shapes, out, **options), progress=stop).interrupted
    train(train_config(shapes, out, resume=True, **options))


def count_spec_parses(monkeypatch, *modules) -> list[str]:
    """The model specs parsed from now on, in order: ``clipkit.models.specs.parse_spec`` is
    wrapped there and in ``modules``, which import it by name."""
    from clipkit.models import specs

    real, parsed = specs.parse_spec, []

    def counted(text):
        parsed.append(text)
        return real(text)

    for module in (specs, *modules):
        monkeypatch.setattr(module, "parse_spec", counted)
    return parsed
