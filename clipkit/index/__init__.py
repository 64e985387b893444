"""FAISS indexes over an embeddings folder: build, tune and update (``build``), open and search
(``load``, without torch), and recall measured against exact search (``recall``). The only
package that imports faiss."""

from __future__ import annotations

from typing import TYPE_CHECKING

from clipkit.infra.lazy import export_lazily

if TYPE_CHECKING:  # what type checkers and editors see; at run time, imported on first use
    from clipkit.index.build import IndexResult, build_index
    from clipkit.index.config import IndexConfig
    from clipkit.index.load import IndexInfo, LoadedIndex, load_index

__all__ = ["IndexConfig", "IndexInfo", "IndexResult", "LoadedIndex", "build_index", "load_index"]
__getattr__, __dir__ = export_lazily(__name__)
