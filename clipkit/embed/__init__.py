"""The ``embed`` service: images and texts to Parquet embedding shards (``run``), and the split of
a run across torchrun ranks that equals a single-process run (``plan``)."""

from __future__ import annotations

from clipkit.infra.lazy import export_lazily

__all__ = ["EmbedConfig", "EmbedResult", "embed"]
__getattr__, __dir__ = export_lazily(
    __name__, dict.fromkeys(__all__, ".run"), callable_service=True
)
