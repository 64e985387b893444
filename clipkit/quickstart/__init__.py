"""The offline quickstart: generated data through every service, scored against chance."""

from __future__ import annotations

from typing import TYPE_CHECKING

from clipkit.infra.lazy import export_lazily

if TYPE_CHECKING:  # what type checkers and editors see; at run time, imported on first use
    from clipkit.quickstart.run import QuickstartConfig, QuickstartResult, StepReport, quickstart

__all__ = ["QuickstartConfig", "QuickstartResult", "StepReport", "quickstart"]
__getattr__, __dir__ = export_lazily(__name__, callable_service=True)
