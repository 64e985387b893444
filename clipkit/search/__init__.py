"""The ``search`` service: text and image queries, weighted, against an index or an embeddings
folder (exact search, no index needed)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from clipkit.infra.lazy import export_lazily

if TYPE_CHECKING:  # what type checkers and editors see; at run time, imported on first use
    from clipkit.search.run import QueryResult, SearchConfig, SearchHit, SearchResult, search

__all__ = ["QueryResult", "SearchConfig", "SearchHit", "SearchResult", "search"]
__getattr__, __dir__ = export_lazily(__name__, callable_service=True)
