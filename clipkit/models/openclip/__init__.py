"""open_clip adapter: the torch :class:`Encoder` (``encoder``) and what builds it from a model
spec, lists models and fingerprints weights (``loaders``).

This package is the only place that imports open_clip (and huggingface_hub, which open_clip
uses).
"""

from __future__ import annotations

from clipkit.models.openclip.encoder import Encoder
from clipkit.models.openclip.loaders import (
    BUILTIN_ARCHS,
    BUILTIN_CONFIG_DIR,
    ModelInfo,
    ModelListing,
    describe_model,
    fingerprint,
    list_models,
    load_matching_model,
    load_model,
    openai_templates,
)

__all__ = [
    "BUILTIN_ARCHS",
    "BUILTIN_CONFIG_DIR",
    "Encoder",
    "ModelInfo",
    "ModelListing",
    "describe_model",
    "fingerprint",
    "list_models",
    "load_matching_model",
    "load_model",
    "openai_templates",
]
