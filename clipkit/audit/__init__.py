"""The ``audit`` service: image-caption pairs whose caption does not describe the image, with
suggested captions, near-duplicates and retrieval recall."""

from __future__ import annotations

from typing import TYPE_CHECKING

from clipkit.infra.lazy import export_lazily

if TYPE_CHECKING:  # what type checkers and editors see; at run time, imported on first use
    from clipkit.audit.config import AuditConfig
    from clipkit.audit.run import AuditResult, Calibration, PairAudit, audit

__all__ = ["AuditConfig", "AuditResult", "Calibration", "PairAudit", "audit"]
__getattr__, __dir__ = export_lazily(__name__, callable_service=True)
