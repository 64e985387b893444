"""open_clip adapter: turn a model spec into an :class:`Encoder`, list models, fingerprint weights.

This is the only module that imports open_clip (and huggingface_hub, which open_clip uses).
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import logging
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import open_clip
import torch
import torch.nn.functional as F
from PIL import Image

from clipkit.config import RANDOM_INIT_SEED
from clipkit.errors import InputError, ModelSpecError
from clipkit.infra.device import Resolved, autocast_dtype, resolve_device, resolve_precision

# downloads sets huggingface_hub's timeouts, which must happen before open_clip imports it.
from clipkit.models import downloads
from clipkit.models.checkpoints import Checkpoint, CheckpointMeta, read_checkpoint
from clipkit.models.pixels import split_transform
from clipkit.models.specs import ModelSpec, SpecKind, parse_spec

BUILTIN_CONFIG_DIR = Path(__file__).parent / "model_configs"
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
_PREPROCESS_KEYS = ("size", "mean", "std", "interpolation", "resize_mode", "fill_color")


class Encoder:
    """A loaded CLIP model with its preprocessing, tokenizer and identity.

    ``encode_images`` and ``encode_texts`` return L2-normalised float32 tensors of shape (B, D)
    on ``self.device``. Weights stay in float32; on CUDA the forward runs under autocast.
    """

    runtime = "torch"

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        spec: str,
        arch: str,
        model_config: dict[str, Any],
        tokenizer: Callable[..., torch.Tensor],
        fingerprint: str,
        device: Resolved,
        precision: Resolved,
        weights: str,
    ) -> None:
        # Any: open_clip's CLIP classes are untyped, and torch.nn.Module's __getattr__ would
        # hide encode_image, visual and logit_scale from the type checker.
        self.model: Any = model.eval()
        self.spec = spec
        self.arch = arch
        self.model_config = model_config
        self.tokenizer = tokenizer
        self.fingerprint = fingerprint
        self.device = device
        self.precision = precision
        self.weights = weights
        self.preprocess_config = _preprocess_config(model)
        self.preprocess = open_clip.image_transform(
            self.preprocess_config["size"],
            is_train=False,
            mean=self.preprocess_config["mean"],
            std=self.preprocess_config["std"],
            resize_mode=self.preprocess_config["resize_mode"],
            interpolation=self.preprocess_config["interpolation"],
            fill_color=self.preprocess_config["fill_color"],
        )
        self._split = split_transform(self.preprocess)

    def train_transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """open_clip's training augmentation (random resized crop) for this model's input."""
        cfg = self.preprocess_config
        return open_clip.image_transform(
            cfg["size"],
            is_train=True,
            mean=cfg["mean"],
            std=cfg["std"],
            interpolation=cfg["interpolation"],
            fill_color=cfg["fill_color"],
        )

    @property
    def embed_dim(self) -> int:
        return int(self.model_config["embed_dim"])

    @property
    def image_size(self) -> tuple[int, int]:
        size = self.preprocess_config["size"]
        return (size, size) if isinstance(size, int) else tuple(size)

    @property
    def logit_scale(self) -> float:
        """``exp(logit_scale)``: the factor the model applies to cosine similarities (1/t)."""
        return float(self.model.logit_scale.detach().exp())

    @property
    def logit_bias(self) -> float | None:
        """SigLIP's ``b`` of ``σ(t·cos + b)``, or None for a model trained with softmax."""
        bias = getattr(self.model, "logit_bias", None)
        return None if bias is None else float(bias.detach())

    @property
    def drops_patches(self) -> bool:
        """Whether the image tower is a ViT whose patches can be dropped (FLIP), not a
        ResNet or a timm tower."""
        return hasattr(self.model.visual, "patch_dropout")

    def set_patch_dropout(self, ratio: float) -> None:
        """Drop this share of the image patches in training mode (FLIP; open_clip's
        ``PatchDropout``: each image keeps ``max(1, int(patches·(1 - ratio)))`` random patches
        and its class token); eval mode always sees every patch. 0 turns it off."""
        assert self.drops_patches, "only ViT image towers have patches to drop"
        visual = self.model.visual
        visual.patch_dropout = (
            open_clip.transformer.PatchDropout(ratio) if ratio > 0 else torch.nn.Identity()
        )

    def add_logit_bias(self, bias: float) -> None:
        """Give the model SigLIP's learnable logit bias, recorded in its config so that its
        checkpoints load with it (open_clip builds the parameter from ``init_logit_bias``)."""
        device = self.model.logit_scale.device
        self.model.logit_bias = torch.nn.Parameter(torch.tensor(float(bias), device=device))
        self.model_config = {**self.model_config, "init_logit_bias": float(bias)}

    @property
    def context_length(self) -> int:
        return int(open_clip.get_model_tokenize_cfg(self.model)["context_length"])

    def preprocess_image(self, image: Image.Image) -> torch.Tensor:
        """PIL image -> normalised tensor (3, H, W), exactly as the model was trained to see it."""
        return self.preprocess(image)

    def prepare_image(self, image: Image.Image) -> torch.Tensor:
        """PIL image -> uint8 pixels (3, H, W), resized and cropped; what decode workers send.

        ``encode_images`` normalises them, a batch at a time on the model's device, to exactly
        what ``preprocess_image`` gives. (Should a transform not split, this returns its float
        output, which ``encode_images`` takes as it is.)
        """
        return self._split.pixels(image)

    def normalize_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 pixels (B, 3, H, W) from ``prepare_image`` -> float32 model input, same device."""
        return self._split.normalize(pixels)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts -> token ids (B, context_length); longer texts are truncated by the tokenizer."""
        return self.tokenizer(list(texts))

    def truncated(self, texts: Sequence[str]) -> list[bool]:
        """Whether each text is longer than the context and so gets cut by ``tokenize``."""
        if isinstance(self.tokenizer, open_clip.SimpleTokenizer):
            # CLIP's BPE tokenizer adds start and end tokens around the encoded text.
            return [len(self.tokenizer.encode(t)) + 2 > self.context_length for t in texts]
        longer = self.tokenizer(list(texts), context_length=8 * self.context_length)
        return ((longer != 0).sum(dim=1) > self.context_length).tolist()

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) -> unit-norm float32 embeddings (B, D).

        ``pixels`` are uint8 from ``prepare_image`` (normalised here, on the device) or float
        from ``preprocess_image``.
        """
        pixels = pixels.to(self.device.value, non_blocking=True)
        if pixels.dtype == torch.uint8:
            pixels = self.normalize_pixels(pixels)
        with self._autocast():
            features = self.model.encode_image(pixels)
        return F.normalize(features.float(), dim=-1)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts (B strings) -> unit-norm float32 embeddings (B, D)."""
        tokens = self.tokenize(texts).to(self.device.value, non_blocking=True)
        with self._autocast():
            features = self.model.encode_text(tokens)
        return F.normalize(features.float(), dim=-1)

    def torch_free_tokenizer(self) -> dict[str, Any] | None:
        """How ``models.tokenizer`` reproduces this model's tokenizer without torch: the BPE
        vocabulary file, the text cleaner and the context; None when it cannot (a Hugging
        Face or SentencePiece tokenizer, or open_clip's token-dropping reductions)."""
        tokenizer: Any = self.tokenizer  # open_clip's tokenizers are untyped
        if type(tokenizer) is not open_clip.SimpleTokenizer or tokenizer.reduction_fn is not None:
            return None
        # open_clip names its cleaners privately: a release that renames them makes the model
        # refuse an export (no match), never tokenize differently.
        names = ("lower", "whitespace", "canonicalize")
        cleaners = {getattr(open_clip.tokenizer, f"_clean_{name}", None): name for name in names}
        clean = cleaners.get(tokenizer.clean_fn)
        special = ("<start_of_text>", "<end_of_text>")
        if clean is None or tuple(tokenizer.encoder)[-2:] != special:
            return None  # added special tokens shift the ids: not the plain CLIP vocabulary
        return {
            "kind": "clip-bpe",
            "vocab_path": open_clip.tokenizer.default_bpe(),
            "clean": clean,
            "context_length": int(tokenizer.context_length),
        }

    def checkpoint_meta(self, **extra: str) -> CheckpointMeta:
        """What a checkpoint of this model must record so that its path alone loads it."""
        return CheckpointMeta(
            arch=self.arch,
            model_config=self.model_config,
            preprocess=self.preprocess_config,
            source=self.spec,
            extra=extra,
        )

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        dtype = autocast_dtype(self.precision.value)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=dtype)


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


def load_model(spec_text: str, *, device: str = "auto", precision: str = "auto") -> Encoder:
    """Load the model a spec names, ready for inference.

    Raises:
        ModelSpecError: the spec names no known architecture, tag or checkpoint.
        WeightsUnavailableError: pretrained weights are neither cached nor downloadable.
        UnsafeCheckpointError: a checkpoint would run code when loaded, or is unreadable.
        DeviceError: the device or precision is not available.
    """
    spec = parse_spec(spec_text)
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
    spec: str | None = None,
    device: str = "auto",
) -> Encoder:
    """The model that made an artifact (or ``spec``, if it has the same fingerprint).

    Raises:
        InputError: ``spec`` loads a model with another fingerprint, or the recorded spec no
            longer names a model here (a checkpoint moved, or a relative path recorded by an
            older clipkit).
    """
    try:
        encoder = load_model(spec or recorded_spec, device=device)
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
        raise _other_model(recorded_spec, recorded_fingerprint, spec, encoder.fingerprint)
    return encoder


def _other_model(
    recorded_spec: str, recorded_fingerprint: str, spec: str | None, fingerprint: str
) -> InputError:
    """What was asked for, what made the data, and the way out: two cases, two messages."""
    made = f"made by {recorded_spec} (fingerprint {recorded_fingerprint})"
    if spec is None or spec == recorded_spec:
        # The same name now loads other weights: a checkpoint replaced since, say.
        return InputError(
            f"This data was {made}, but {recorded_spec} now loads another model "
            f"(fingerprint {fingerprint}): its weights changed since.",
            f"Pass the model that made it with -m (any spec of fingerprint "
            f"{recorded_fingerprint}), or embed again with this one.",
        )
    return InputError(
        f"This data was {made}; -m {spec} is another model (fingerprint {fingerprint}).",
        f"Leave out -m to use {recorded_spec}, or embed again with {spec}.",
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
        "preprocess": _preprocess_config(model),
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
    preprocess = {key: pretrained_cfg[key] for key in _PREPROCESS_KEYS if key in pretrained_cfg}
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


def _preprocess_config(model: torch.nn.Module) -> dict[str, Any]:
    cfg = open_clip.get_model_preprocess_cfg(model)
    merged = {"interpolation": "bicubic", "resize_mode": "shortest", "fill_color": 0, **cfg}
    merged["mean"] = list(merged["mean"])
    merged["std"] = list(merged["std"])
    if not isinstance(merged["size"], int):
        merged["size"] = list(merged["size"])
    return {key: merged[key] for key in _PREPROCESS_KEYS}


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
