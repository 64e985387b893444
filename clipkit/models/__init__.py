"""Models: spec strings (``specs``), the open_clip encoder and its loaders (``openclip``),
checkpoints, weight downloads and the pixel normalisation that runs where the model runs
(``pixels``); and the runtime without torch: ONNX export (``onnx_export``), exports on disk
and their cache (``exported``), the ONNX Runtime encoder (``onnx_encoder``) with its NumPy
tokenizer and preprocessing (``tokenizer``, ``preprocess``), and the choice between runtimes
(``runtime``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from clipkit.infra.lazy import export_lazily

if TYPE_CHECKING:  # what type checkers and editors see; at run time, imported on first use
    from clipkit.models.onnx_encoder import OnnxEncoder, load_onnx
    from clipkit.models.onnx_export import export_onnx
    from clipkit.models.openclip import (
        Encoder,
        ModelInfo,
        ModelListing,
        describe_model,
        fingerprint,
        list_models,
        load_matching_model,
        load_model,
    )
    from clipkit.models.runtime import load_matching_encoder
    from clipkit.models.specs import ModelSpec, parse_spec

__all__ = [
    "Encoder",
    "ModelInfo",
    "ModelListing",
    "ModelSpec",
    "OnnxEncoder",
    "describe_model",
    "export_onnx",
    "fingerprint",
    "list_models",
    "load_matching_encoder",
    "load_matching_model",
    "load_model",
    "load_onnx",
    "parse_spec",
]
__getattr__, __dir__ = export_lazily(__name__)
