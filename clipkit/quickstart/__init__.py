"""The offline quickstart: generated data through every service, scored against chance."""

from __future__ import annotations

from clipkit.infra.lazy import export_lazily

__all__ = ["QuickstartConfig", "QuickstartResult", "StepReport", "quickstart"]
__getattr__, __dir__ = export_lazily(
    __name__, dict.fromkeys(__all__, ".run"), callable_service=True
)
