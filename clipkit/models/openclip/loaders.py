"""open_clip's loaders: turn a model spec into an :class:`Encoder`, list models, fingerprint
weights (open_clip's builders, pretrained tags, Hugging Face Hub and checkpoints)."""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import logging
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import open_clip
import torch

from clipkit.config import RANDOM_INIT_SEED
from clipkit.errors import InputError, ModelSpecError
from clipkit.infra.device import resolve_device, resolve_precision

# downloads sets huggingface_hub's timeouts, which must happen before open_clip imports it.
from clipkit.models import downloads
from clipkit.models.checkpoints import Checkpoint, CheckpointMeta, read_checkpoint
from clipkit.models.openclip.encoder import PREPROCESS_KEYS, Encoder, preprocess_config
from clipkit.models.specs import ModelSpec, SpecKind, as_spec

BUILTIN_CONFIG_DIR = Path(__file__).parent.parent / "model_configs"
BUILTIN_ARCHS = tuple(sorted(path.stem for path in BUILTIN_CONFIG_DIR.glob("*.json")))
open_clip.add_model_config(BUILTIN_CONFIG_DIR)

# The tag a bare ARCH resolves to, where the first tag open_clip lists is not the best choice.
PREFERRED_TAGS = {
    "ViT-B-32": "laion2b_s34b_b79k",
    "ViT-B-16": "laion2b_s34b_b88k",
    "ViT-L-14": "laion2b_s32b_b82k",
    "ViT-H-14": "laion2b_s32b_b79k",
    "ViT-g-14": "laion2b_s34b_b88k",
    "RN50": "openai",
}


@dataclass(frozen=True)
class ModelListing:
    """One row of ``clipkit models``."""

    spec: str
    source: str
    cached: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ModelInfo:
    """What ``clipkit models info`` reports about a loaded model."""

    spec: str
    architecture: str
    weights: str
    embed_dim: int
    image_size: str
    context_length: int
    parameters: int
    vision_parameters: int
    text_parameters: int
    fingerprint: str
    device: str
    precision: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_model(spec: str | ModelSpec, *, device: str = "auto", precision: str = "auto") -> Encoder:
    """Load the model a spec names, ready for inference.

    Raises:
        ModelSpecError: the spec names no known architecture, tag or checkpoint.
        WeightsUnavailableError: pretrained weights are neither cached nor downloadable.
        UnsafeCheckpointError: a checkpoint would run code when loaded, or is unreadable.
        DeviceError: the device or precision is not available.
    """
    spec = as_spec(spec)
    resolved_device = resolve_device(device)
    resolved_precision = resolve_precision(resolved_device.value, precision)
    model, arch, model_config, weights = _build(spec)
    tokenizer = open_clip.get_tokenizer(arch)
    fp = fingerprint(model, model_config, tokenizer)
    model.to(resolved_device.value)
    return Encoder(
        model,
        spec=spec.recorded,
        arch=arch,
        model_config=model_config,
        tokenizer=tokenizer,
        fingerprint=fp,
        device=resolved_device,
        precision=resolved_precision,
        weights=weights,
    )


def load_matching_model(
    recorded_spec: str,
    recorded_fingerprint: str,
    *,
    spec: str | ModelSpec | None = None,
    device: str = "auto",
) -> Encoder:
    """The model that made an artifact (or ``spec``, if it has the same fingerprint).

    Raises:
        InputError: ``spec`` loads a model with another fingerprint, or the recorded spec no
            longer names a model here (a checkpoint moved, or a relative path recorded by an
            older clipkit).
    """
    given = None if spec is None else as_spec(spec)
    try:
        encoder = load_model(given or recorded_spec, device=device)
    except (InputError, ModelSpecError) as error:
        if spec is not None:
            raise
        raise InputError(
            f"The model recorded with this data, {recorded_spec}, does not load: "
            f"{error.message.rstrip('.')}.",
            f"Pass it with -m (any spec of the same model, fingerprint {recorded_fingerprint}),"
            " for example the checkpoint where it lies now.",
        ) from None
    if encoder.fingerprint != recorded_fingerprint:
        raise _other_model(recorded_spec, recorded_fingerprint, given, encoder.fingerprint)
    return encoder


def _other_model(
    recorded_spec: str, recorded_fingerprint: str, given: ModelSpec | None, fingerprint: str
) -> InputError:
    """What was asked for, what made the data, and the way out: two cases, two messages."""
    made = f"made by {recorded_spec} (fingerprint {recorded_fingerprint})"
    if given is None or given.recorded == recorded_spec:
        # The same name now loads other weights: a checkpoint replaced since, say.
        return InputError(
            f"This data was {made}, but {recorded_spec} now loads another model "
            f"(fingerprint {fingerprint}): its weights changed since.",
            f"Pass the model that made it with -m (any spec of fingerprint "
            f"{recorded_fingerprint}), or embed again with this one.",
        )
    return InputError(
        f"This data was {made}; -m {given.text} is another model (fingerprint {fingerprint}).",
        f"Leave out -m to use {recorded_spec}, or embed again with {given.text}.",
    )


def openai_templates() -> tuple[str, ...]:
    """The 80 ImageNet prompt templates of the CLIP paper, as open_clip ships them."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return tuple(template("{}") for template in OPENAI_IMAGENET_TEMPLATES)


def describe_model(spec_text: str, *, device: str | None = None) -> ModelInfo:
    """Load a model and summarise its shape, size and identity.

    Args:
        device: where to load it; None loads it on the CPU, the default for inspecting.
    """
    encoder = load_model(spec_text, device=device or "cpu")
    where = "default" if device is None else encoder.device.reason
    total = sum(p.numel() for p in encoder.model.parameters())
    vision = sum(p.numel() for p in encoder.model.visual.parameters())
    height, width = encoder.image_size
    return ModelInfo(
        spec=encoder.spec,
        architecture=encoder.arch,
        weights=encoder.weights,
        embed_dim=encoder.embed_dim,
        image_size=f"{height}x{width}",
        context_length=encoder.context_length,
        parameters=total,
        vision_parameters=vision,
        text_parameters=total - vision,
        fingerprint=encoder.fingerprint,
        device=f"{encoder.device.value} ({where})",
        precision=f"{encoder.precision.value} ({encoder.precision.reason})",
    )


def list_models(name_filter: str | None = None, *, cached_only: bool = False) -> list[ModelListing]:
    """Built-in architectures, open_clip pretrained tags and bare architectures, cache state."""
    rows = [ModelListing(f"{arch}:random", "built-in (clipkit)", False) for arch in BUILTIN_ARCHS]
    tagged = set()
    for arch, tag in open_clip.list_pretrained():
        tagged.add(arch)
        cfg = open_clip.get_pretrained_cfg(arch, tag)
        rows.append(
            ModelListing(
                f"{arch}:{tag}", "open_clip pretrained", downloads.cached_file(cfg) is not None
            )
        )
    for arch in open_clip.list_models():
        # "ARCH@hash" names a checkpoint's own config (_register), not an architecture to offer
        if arch not in tagged and arch not in BUILTIN_ARCHS and "@" not in arch:
            rows.append(ModelListing(f"{arch}:random", "open_clip architecture", False))
    if name_filter:
        needle = name_filter.lower()
        rows = [row for row in rows if needle in row.spec.lower()]
    if cached_only:
        rows = [row for row in rows if row.cached]
    return rows


def fingerprint(
    model: torch.nn.Module, model_config: dict[str, Any], tokenizer: Callable[..., Any]
) -> str:
    """A stable 16-hex-digit identity of architecture, weights and preprocessing.

    Equal weights give equal fingerprints however they were loaded (tag, checkpoint, run folder).
    """
    digest = hashlib.blake2b(digest_size=8)
    identity = {
        "model_config": model_config,
        "preprocess": preprocess_config(model),
        "tokenizer": [type(tokenizer).__name__, open_clip.get_model_tokenize_cfg(model)],
    }
    digest.update(json.dumps(identity, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _build(spec: ModelSpec) -> tuple[torch.nn.Module, str, dict[str, Any], str]:
    """Create the model on the CPU in float32: (model, registered arch, config, weights label)."""
    if spec.kind is SpecKind.HF_HUB:
        return _build_hf_hub(spec)
    if spec.kind is SpecKind.CHECKPOINT:
        return _build_from_checkpoint(spec)
    arch = _known_arch(spec)
    config = open_clip.get_model_config(arch)
    if spec.kind is SpecKind.RANDOM:
        return _create(arch), arch, config, f"random init (seed {RANDOM_INIT_SEED})"
    tag = spec.tag or _default_tag(arch, spec)
    pretrained_cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not pretrained_cfg:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise ModelSpecError(
            f"{arch} has no pretrained tag {tag!r}.",
            f"Tags for {arch}: {', '.join(tags)}." if tags else f"Use {arch}:random.",
        )
    weights_file = _fetch_pretrained(spec.text, pretrained_cfg)
    preprocess = {key: pretrained_cfg[key] for key in PREPROCESS_KEYS if key in pretrained_cfg}
    model = _create(arch, preprocess=preprocess)
    open_clip.load_checkpoint(model, weights_file, weights_only=True)
    return model, arch, config, f"pretrained {arch}:{tag}"


def _build_hf_hub(spec: ModelSpec) -> tuple[torch.nn.Module, str, dict[str, Any], str]:
    name = f"hf-hub:{spec.hub_id}"
    downloads.require_online(spec.text)
    downloads.probe(downloads.hub_host(), spec.text)
    model = downloads.with_timeout(
        lambda: open_clip.create_model(name, pretrained_text=False, pretrained_image=False),
        spec.text,
    )
    config = open_clip.get_model_config(name)
    return model.float(), name, config, f"Hugging Face Hub {spec.hub_id}"


def _build_from_checkpoint(spec: ModelSpec) -> tuple[torch.nn.Module, str, dict[str, Any], str]:
    assert spec.path is not None
    checkpoint = read_checkpoint(spec.path)
    if checkpoint.meta is not None:
        arch = _register(checkpoint.meta)
        model = _create(arch, preprocess=checkpoint.meta.preprocess)
        _load_exact(model, checkpoint)
        return model, arch, checkpoint.meta.model_config, f"checkpoint {checkpoint.path}"
    if spec.arch is None:
        raise ModelSpecError(
            f"{checkpoint.path} does not record its architecture (not written by clipkit).",
            f"Name the architecture in front of the path, e.g. -m ViT-B-32:{spec.path}",
        )
    arch = _known_arch(spec)
    model = _create(arch)
    open_clip.load_checkpoint(model, str(checkpoint.path), weights_only=True)
    return model, arch, open_clip.get_model_config(arch), f"checkpoint {checkpoint.path}"


def _create(arch: str, *, preprocess: dict[str, Any] | None = None) -> torch.nn.Module:
    """Instantiate a registered architecture with seeded random weights (loaded over later)."""
    with torch.random.fork_rng(devices=[]), _quiet_open_clip():
        torch.manual_seed(RANDOM_INIT_SEED)
        return open_clip.create_model(
            arch,
            pretrained=None,
            pretrained_image=False,
            pretrained_text=False,
            force_preprocess_cfg=preprocess,
        )


def _load_exact(model: torch.nn.Module, checkpoint: Checkpoint) -> None:
    result = model.load_state_dict(checkpoint.state_dict, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ModelSpecError(
            f"{checkpoint.path} does not match its recorded architecture "
            f"({len(result.missing_keys)} missing, {len(result.unexpected_keys)} unexpected "
            f"weights, e.g. {(result.missing_keys + result.unexpected_keys)[0]}).",
            "The file was modified after clipkit wrote it; use the original checkpoint.",
        )


def _known_arch(spec: ModelSpec) -> str:
    assert spec.arch is not None
    arch = spec.arch.replace("/", "-")  # open_clip accepts "ViT-B/32" for "ViT-B-32"
    known = open_clip.list_models()
    if arch in known:
        return arch
    close = difflib.get_close_matches(arch, known, n=3, cutoff=0.6)
    if "/" in spec.arch:
        message = f"{spec.arch!r} is neither an existing path nor a known architecture."
    else:
        message = f"Unknown model architecture {spec.arch!r}."
    hint = f"Did you mean {', '.join(close)}? " if close else ""
    raise ModelSpecError(message, hint + "List architectures with: clipkit models")


def _default_tag(arch: str, spec: ModelSpec) -> str:
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if not tags:
        raise ModelSpecError(
            f"{arch} has no pretrained weights in open_clip, so {spec.text!r} names no weights.",
            f"Use {arch}:random to start from random weights, or a checkpoint path.",
        )
    preferred = PREFERRED_TAGS.get(arch)
    return preferred if preferred is not None and preferred in tags else tags[0]


def _fetch_pretrained(spec_text: str, pretrained_cfg: dict[str, Any]) -> str:
    """Path of the weights file for a pretrained tag: from the cache, else a bounded download."""
    cached = downloads.cached_file(pretrained_cfg)
    if cached is not None:
        return cached
    downloads.require_online(spec_text)
    url = "" if pretrained_cfg.get("hf_hub") else pretrained_cfg.get("url", "")
    downloads.probe(urlparse(url).hostname if url else downloads.hub_host(), spec_text)
    return downloads.with_timeout(lambda: open_clip.download_pretrained(pretrained_cfg), spec_text)


# Where checkpoints' embedded configs are written for open_clip to find (it only reads configs
# from files). Removed when the interpreter exits (TemporaryDirectory's finalizer); open_clip
# may rescan the folder until then, so it lives as long as the process.
_registry: tempfile.TemporaryDirectory[str] | None = None


def _register(meta: CheckpointMeta) -> str:
    """Make a checkpoint's embedded config known to open_clip; returns the name to create it by."""
    if open_clip.get_model_config(meta.arch) == meta.model_config:
        return meta.arch
    global _registry
    if _registry is None:
        _registry = tempfile.TemporaryDirectory(prefix="clipkit-configs-")
        open_clip.add_model_config(_registry.name)
    config_json = json.dumps(meta.model_config, sort_keys=True)
    name = f"{meta.arch}@{hashlib.blake2b(config_json.encode(), digest_size=4).hexdigest()}"
    (Path(_registry.name) / f"{name}.json").write_text(config_json)
    open_clip.add_model_config(_registry.name)  # rescans the folder
    return name


@contextlib.contextmanager
def _quiet_open_clip() -> Iterator[None]:
    """Drop open_clip's own log records while it builds a model.

    It logs "initialized randomly"-style warnings on the root logger, misleading noise since
    weights are loaded next. A filter on the root logger drops only records from open_clip's
    files: the level, and every other library's and the user's records, stay as they are.
    """
    root = logging.getLogger()
    root.addFilter(_not_from_open_clip)
    try:
        yield
    finally:
        root.removeFilter(_not_from_open_clip)


def _not_from_open_clip(record: logging.LogRecord) -> bool:
    return not record.pathname.startswith(_OPEN_CLIP_DIR)


_OPEN_CLIP_DIR = str(Path(open_clip.__file__).parent)
