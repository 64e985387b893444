"""Models: spec strings (``specs``), the open_clip encoder (``openclip``), checkpoints, weight
downloads and the pixel normalisation that runs where the model runs (``pixels``)."""

from __future__ import annotations

from clipkit.infra.lazy import export_lazily

__all__ = [
    "Encoder",
    "ModelInfo",
    "ModelListing",
    "ModelSpec",
    "describe_model",
    "fingerprint",
    "list_models",
    "load_matching_model",
    "load_model",
    "parse_spec",
]
__getattr__, __dir__ = export_lazily(
    __name__, {**dict.fromkeys(__all__, ".openclip"), "ModelSpec": ".specs", "parse_spec": ".specs"}
)
