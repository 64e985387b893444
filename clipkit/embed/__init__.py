"""The ``embed`` service: images and texts to Parquet embedding shards (``run``; ``on_ray``
with ``--engine ray``), what it is asked and what it did (``config``), the steps both engines
take (``steps``), the rows written shard by shard (``shards``), and the plan that makes a
torchrun job or a Ray run equal a single-process run (``plan``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from clipkit.infra.lazy import export_lazily

if TYPE_CHECKING:  # what type checkers and editors see; at run time, imported on first use
    from clipkit.embed.run import EmbedConfig, EmbedResult, embed

__all__ = ["EmbedConfig", "EmbedResult", "embed"]
__getattr__, __dir__ = export_lazily(__name__, callable_service=True)
