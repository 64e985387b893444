"""The ``search`` service: text and image queries, weighted, against an index or an embeddings
folder (exact search, no index needed)."""

from __future__ import annotations

from clipkit.infra.lazy import export_lazily

__all__ = ["QueryResult", "SearchConfig", "SearchHit", "SearchResult", "search"]
__getattr__, __dir__ = export_lazily(
    __name__, dict.fromkeys(__all__, ".run"), callable_service=True
)
