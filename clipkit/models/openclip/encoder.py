"""The torch encoder: an open_clip model with its preprocessing, tokenizer and identity.

:mod:`clipkit.models.openclip.loaders` builds it from a model spec.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from PIL import Image

from clipkit.infra.device import Resolved, autocast_dtype
from clipkit.models.checkpoints import CheckpointMeta
from clipkit.models.pixels import split_transform

PREPROCESS_KEYS = ("size", "mean", "std", "interpolation", "resize_mode", "fill_color")


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
        self.preprocess_config = preprocess_config(model)
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


def preprocess_config(model: torch.nn.Module) -> dict[str, Any]:
    """open_clip's preprocessing of ``model`` as the JSON an export and a run record."""
    cfg = open_clip.get_model_preprocess_cfg(model)
    merged = {"interpolation": "bicubic", "resize_mode": "shortest", "fill_color": 0, **cfg}
    merged["mean"] = list(merged["mean"])
    merged["std"] = list(merged["std"])
    if not isinstance(merged["size"], int):
        merged["size"] = list(merged["size"])
    return {key: merged[key] for key in PREPROCESS_KEYS}
