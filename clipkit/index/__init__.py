"""FAISS indexes over an embeddings folder: build, tune and update (``build``), open and search
(``load``, without torch), and recall measured against exact search (``recall``). The only
package that imports faiss."""

from __future__ import annotations

from clipkit.infra.lazy import export_lazily

__all__ = ["IndexConfig", "IndexInfo", "IndexResult", "LoadedIndex", "build_index", "load_index"]
__getattr__, __dir__ = export_lazily(
    __name__,
    {
        **dict.fromkeys(__all__, ".build"),
        "IndexConfig": ".config",
        **dict.fromkeys(("IndexInfo", "LoadedIndex", "load_index"), ".load"),
    },
)
