"""The ``audit`` service: image-caption pairs whose caption does not describe the image, with
suggested captions, near-duplicates and retrieval recall.

``config`` holds what an audit is asked and the checks that need no model, ``run`` the
service, ``calibration`` the null of shuffled pairs and the flag rule, ``mixture`` the share of
mismatched pairs and each pair's probability, ``pairing`` the pairs of an embeddings folder,
``clean`` the cleaned and flagged tables."""

from __future__ import annotations

from typing import TYPE_CHECKING

from clipkit.infra.lazy import export_lazily

if TYPE_CHECKING:  # what type checkers and editors see; at run time, imported on first use
    from clipkit.audit.calibration import Calibration
    from clipkit.audit.config import AuditConfig
    from clipkit.audit.run import AuditResult, PairAudit, audit

__all__ = ["AuditConfig", "AuditResult", "Calibration", "PairAudit", "audit"]
__getattr__, __dir__ = export_lazily(__name__, callable_service=True)
