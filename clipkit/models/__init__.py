"""Models: spec strings (``specs``), the open_clip encoder (``openclip``), checkpoints, weight
downloads and the pixel normalisation that runs where the model runs (``pixels``); and the
runtime without torch: ONNX export (``onnx_export``), exports on disk and their cache
(``exported``), the ONNX Runtime encoder (``onnx_encoder``) with its NumPy tokenizer and
preprocessing (``tokenizer``, ``preprocess``), and the choice between runtimes (``runtime``)."""

from __future__ import annotations

from clipkit.infra.lazy import export_lazily

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
__getattr__, __dir__ = export_lazily(
    __name__,
    {
        **dict.fromkeys(__all__, ".openclip"),
        "ModelSpec": ".specs",
        "parse_spec": ".specs",
        "OnnxEncoder": ".onnx_encoder",
        "load_onnx": ".onnx_encoder",
        "export_onnx": ".onnx_export",
        "load_matching_encoder": ".runtime",
    },
)
