"""Reports: self-contained HTML pages (``html``) and PNG charts (``plots``, the only module that
imports matplotlib)."""

from __future__ import annotations

from clipkit.infra.lazy import export_lazily

__all__ = [
    "OverviewCard",
    "write_audit_report",
    "write_overview",
    "write_search_gallery",
    "write_zeroshot_report",
]
__getattr__, __dir__ = export_lazily(__name__, dict.fromkeys(__all__, ".html"))
