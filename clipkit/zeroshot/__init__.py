"""The ``zeroshot`` service: label images by prompts (``run``), with the class trees, labels and
prompt templates it shares with ``train --eval-classes`` (``classes``)."""

from __future__ import annotations

from clipkit.infra.lazy import export_lazily

__all__ = [
    "Prediction",
    "Rejection",
    "ZeroShotConfig",
    "ZeroShotResult",
    "prediction_rows",
    "write_predictions",
    "zeroshot",
]
__getattr__, __dir__ = export_lazily(
    __name__, dict.fromkeys(__all__, ".run"), callable_service=True
)
