"""clipkit: embedding, retrieval and fine-tuning toolkit for CLIP models.

The services are importable from here without loading torch until one is used:
``from clipkit import embed, EmbedConfig`` then ``embed(EmbedConfig(...))``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from clipkit.infra.lazy import export_lazily

if TYPE_CHECKING:  # what type checkers and editors see; at run time, imported on first use
    from clipkit import index, models, score, store
    from clipkit.audit.config import AuditConfig
    from clipkit.audit.run import audit
    from clipkit.embed.run import EmbedConfig, embed
    from clipkit.index.build import build_index
    from clipkit.index.config import IndexConfig
    from clipkit.index.load import load_index
    from clipkit.models.openclip import load_model
    from clipkit.quickstart.run import QuickstartConfig, quickstart
    from clipkit.search.run import SearchConfig, search
    from clipkit.train.config import TrainConfig
    from clipkit.train.run import train
    from clipkit.zeroshot.run import ZeroShotConfig, zeroshot

__version__ = "0.2.0"

__all__ = [
    "__version__",
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
    "AuditConfig",
    "EmbedConfig",
    "IndexConfig",
    "QuickstartConfig",
    "SearchConfig",
    "TrainConfig",
    "ZeroShotConfig",
    "build_index",
    "load_index",
    "load_model",
]
__getattr__, __dir__ = export_lazily(__name__)
