"""clipkit: embedding, retrieval and fine-tuning toolkit for CLIP models.

The services are importable from here without loading torch until one is used:
``from clipkit import embed, EmbedConfig`` then ``embed(EmbedConfig(...))``.
"""

from __future__ import annotations

from clipkit.infra.lazy import export_lazily

__version__ = "0.2.0"

_SUBPACKAGES = (
    "audit",
    "embed",
    "index",
    "models",
    "quickstart",
    "score",
    "search",
    "store",
    "train",
    "zeroshot",
)
_NAMES = {
    "AuditConfig": "clipkit.audit.config",
    "EmbedConfig": "clipkit.embed.run",
    "IndexConfig": "clipkit.index.config",
    "QuickstartConfig": "clipkit.quickstart.run",
    "SearchConfig": "clipkit.search.run",
    "TrainConfig": "clipkit.train.config",
    "ZeroShotConfig": "clipkit.zeroshot.run",
    "build_index": "clipkit.index.build",
    "load_index": "clipkit.index.load",
    "load_model": "clipkit.models.openclip",
}
__all__ = ["__version__", *_SUBPACKAGES, *_NAMES]
__getattr__, __dir__ = export_lazily(__name__, {**dict.fromkeys(_SUBPACKAGES, ""), **_NAMES})
