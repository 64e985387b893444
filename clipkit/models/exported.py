"""ONNX exports on disk: the manifest that describes one, its checks, and the cache of exports
keyed by model fingerprint. No heavy imports: the torch-free runtime reads exports with it.

An export folder holds ``image.onnx`` and ``text.onnx`` (unit-norm embeddings, dynamic batch),
the tokenizer's vocabulary, and ``clipkit-onnx.json``: the model's identity (spec,
fingerprint), its preprocessing, tokenizer, embedding size, ``logit_scale`` (and
``logit_bias``), and each file's size and hash. A folder is published whole, by a rename, so
a reader never meets half an export.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from clipkit.config import ENV_ONNX_CACHE
from clipkit.errors import InputError

MANIFEST_FILE = "clipkit-onnx.json"
FORMAT_VERSION = 1
IMAGE_FILE, TEXT_FILE = "image.onnx", "text.onnx"
_HASH_CHUNK = 1 << 22


@dataclass(frozen=True)
class ExportManifest:
    """What ``clipkit-onnx.json`` records about an export."""

    spec: str
    arch: str
    fingerprint: str
    embed_dim: int
    image_size: tuple[int, int]
    preprocess: dict[str, Any]
    tokenizer: dict[str, Any]  # kind, vocab (a file in the folder), clean, context_length
    logit_scale: float
    logit_bias: float | None
    precision: str = "fp32"
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> bytes, mtime, hash
    format: int = FORMAT_VERSION
    clipkit_version: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def cache_root() -> Path:
    """Where exports are cached: ``$CLIPKIT_ONNX_CACHE``, else ``~/.cache/clipkit/onnx``
    (``$XDG_CACHE_HOME/clipkit/onnx`` where that is set)."""
    explicit = os.environ.get(ENV_ONNX_CACHE)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "clipkit" / "onnx"


def cached_export(fingerprint: str) -> Path:
    """The cache folder for the export of the model with this fingerprint (may not exist)."""
    return cache_root() / fingerprint


def file_record(path: Path) -> dict[str, Any]:
    """Size, modification time and BLAKE2b hash of a file of an export."""
    stat = path.stat()
    return {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "blake2b": _hash(path)}


def read_export(folder: Path, fingerprint: str | None = None) -> ExportManifest:
    """Read and check an export: its manifest, the model it is (``fingerprint`` when given),
    and that every file it lists is there and whole.

    A file with the recorded size and modification time is the one the export wrote; any
    other is hashed and compared, so a copied folder is checked once per read and a damaged
    or truncated file is refused.

    Raises:
        InputError: no export here, another model's, or a missing or damaged file.
    """
    manifest_path = folder / MANIFEST_FILE
    rebuild = f"Export it again: clipkit export SPEC -o {folder} (SPEC: the model's spec)"
    try:
        raw = json.loads(manifest_path.read_text(encoding="utf-8"))
        raw["image_size"] = tuple(raw["image_size"])
        manifest = ExportManifest(**raw)
    except FileNotFoundError:
        raise InputError(
            f"{folder} holds no ONNX export ({MANIFEST_FILE} is missing).", rebuild
        ) from None
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise InputError(
            f"{manifest_path} is not a readable export manifest ({error}).", rebuild
        ) from None
    if manifest.format != FORMAT_VERSION:
        raise InputError(
            f"{folder} is an export of format {manifest.format}, not {FORMAT_VERSION}.", rebuild
        )
    if fingerprint is not None and manifest.fingerprint != fingerprint:
        raise InputError(
            f"{folder} is an export of model {manifest.spec} (fingerprint {manifest.fingerprint}), "
            f"not of the model with fingerprint {fingerprint}.",
            rebuild,
        )
    for name, record in manifest.files.items():
        _check_file(folder / name, record, rebuild)
    return manifest


def _check_file(path: Path, record: dict[str, Any], rebuild: str) -> None:
    try:
        stat = path.stat()
    except OSError:
        raise InputError(f"{path} is missing from its export.", rebuild) from None
    if stat.st_size != record["bytes"]:
        raise InputError(
            f"{path} has {stat.st_size:,} bytes where its export wrote {record['bytes']:,}: it is "
            "truncated or damaged.",
            rebuild,
        )
    if stat.st_mtime_ns != record["mtime_ns"] and _hash(path) != record["blake2b"]:
        raise InputError(f"{path} is not the file its export wrote (its hash differs).", rebuild)


def _hash(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
