"""ONNX exports on disk: the manifest that describes one, its checks, and the cache of exports
keyed by model fingerprint. No heavy imports: the torch-free runtime reads exports with it.

An export folder holds ``image.onnx`` and ``text.onnx`` (unit-norm embeddings, dynamic batch),
the tokenizer's vocabulary, and ``clipkit-onnx.json``: the model's identity (spec,
fingerprint), its preprocessing, tokenizer, embedding size, ``logit_scale`` (and
``logit_bias``), and each file's size and hash. A folder is published whole, by a rename, so
a reader never meets half an export.

Beside the exports, ``specs.json`` remembers which fingerprint each exported spec loaded (with
the size and time of a checkpoint's files), so that a command given a spec, not an artifact
(``clipkit embed -m SPEC``), finds its export without loading the model to fingerprint it.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from clipkit.config import ENV_ONNX_CACHE, ExportPrecision
from clipkit.errors import ClipkitError, InputError
from clipkit.models.specs import ModelSpec, SpecKind, as_spec

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
    precision: ExportPrecision = "fp32"
    agreement: dict[str, float] | None = None  # int8: how it answered against fp32, measured
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


SPECS_FILE = "specs.json"


def remember_spec(spec: str, fingerprint: str) -> None:
    """Record that ``spec`` (as artifacts record it) loads the model with this fingerprint.

    Best effort: the cache works without it (a command then loads the model with torch), so a
    failure to write is ignored.
    """
    known = _read_specs()
    known[spec] = {"fingerprint": fingerprint, "files": checkpoint_files(spec)}
    path = cache_root() / SPECS_FILE
    staging = path.with_name(f".{SPECS_FILE}.{os.getpid()}")
    try:
        staging.write_text(json.dumps(known, indent=2, sort_keys=True), encoding="utf-8")
        os.replace(staging, path)
    except OSError:
        staging.unlink(missing_ok=True)


def fingerprint_of_spec(spec: str | ModelSpec) -> str | None:
    """The fingerprint ``spec`` loaded when it was exported, if its checkpoint files are the
    same now (None: never exported, or the checkpoint changed since)."""
    try:
        parsed = as_spec(spec)
    except ClipkitError:
        return None
    known = _read_specs().get(parsed.recorded)  # as the export recorded it: a path made absolute
    if not isinstance(known, dict) or known.get("files") != checkpoint_files(parsed):
        return None
    fingerprint = known.get("fingerprint")
    return fingerprint if isinstance(fingerprint, str) else None


def _read_specs() -> dict[str, Any]:
    try:
        known = json.loads((cache_root() / SPECS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def checkpoint_files(spec: str | ModelSpec) -> list[list[Any]] | None:
    """(name, bytes, mtime) of the files a checkpoint spec reads (a file, or a run folder's
    files); None for a spec that names no local files (an architecture, a tag, the hub)."""
    try:
        parsed = as_spec(spec)
    except ClipkitError:
        return None
    if parsed.kind is not SpecKind.CHECKPOINT or parsed.path is None:
        return None
    root = Path(os.path.abspath(parsed.path))  # as recorded: a relative spec names the same files
    paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    files = []
    for path in paths:
        stat = path.stat()
        files.append([str(path), stat.st_size, stat.st_mtime_ns])
    return files


def replace_towers(folder: Path, replacements: Path, names: Sequence[str]) -> None:
    """Replace each tower in ``names`` (its graph and weights) in ``folder`` by the one in the
    subfolder ``replacements`` (fused or quantized), then remove that subfolder."""
    for name in names:
        for path in folder.glob(f"{glob.escape(name)}*"):
            path.unlink()
    for path in replacements.iterdir():
        path.rename(folder / path.name)
    shutil.rmtree(replacements)


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
    rebuild = f"Export it again: clipkit export -m SPEC -o {folder} (SPEC: the model's spec)"
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
