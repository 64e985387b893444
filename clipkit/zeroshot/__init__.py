"""The ``zeroshot`` service: label images by prompts (``run``), with the class trees, labels and
prompt templates it shares with ``train --eval-classes`` (``classes``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from clipkit.infra.lazy import export_lazily

if TYPE_CHECKING:  # what type checkers and editors see; at run time, imported on first use
    from clipkit.zeroshot.run import (
        Prediction,
        Rejection,
        ZeroShotConfig,
        ZeroShotResult,
        prediction_rows,
        write_predictions,
        zeroshot,
    )

__all__ = [
    "Prediction",
    "Rejection",
    "ZeroShotConfig",
    "ZeroShotResult",
    "prediction_rows",
    "write_predictions",
    "zeroshot",
]
__getattr__, __dir__ = export_lazily(__name__, callable_service=True)
