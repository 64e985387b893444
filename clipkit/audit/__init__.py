"""The ``audit`` service: image-caption pairs whose caption does not describe the image, with
suggested captions, near-duplicates and retrieval recall."""

from __future__ import annotations

from clipkit.infra.lazy import export_lazily

__all__ = ["AuditConfig", "AuditResult", "Calibration", "PairAudit", "audit"]
__getattr__, __dir__ = export_lazily(
    __name__, {**dict.fromkeys(__all__, ".run"), "AuditConfig": ".config"}, callable_service=True
)
