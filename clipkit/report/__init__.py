"""Reports: self-contained HTML pages of the services' results (``html``), with the charts of
:mod:`clipkit.plots`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from clipkit.infra.lazy import export_lazily

if TYPE_CHECKING:  # what type checkers and editors see; at run time, imported on first use
    from clipkit.report.html import (
        OverviewCard,
        write_audit_report,
        write_overview,
        write_search_gallery,
        write_zeroshot_report,
    )

__all__ = [
    "OverviewCard",
    "write_audit_report",
    "write_overview",
    "write_search_gallery",
    "write_zeroshot_report",
]
__getattr__, __dir__ = export_lazily(__name__)
