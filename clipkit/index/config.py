"""What ``clipkit index`` is asked to do, and the checks that need neither faiss nor torch.

``clipkit index`` runs :func:`preflight` before it imports the builder (faiss and torch take
2 s to import), so a mistyped folder is reported at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clipkit import store
from clipkit.infra.atomic import check_output
from clipkit.infra.fields import check_config


@dataclass(frozen=True)
class IndexConfig:
    emb_dir: Path
    out_dir: Path
    kind: str = "auto"  # auto | image | text
    index_type: str = "auto"  # auto | flat | hnsw | ivf | ivfpq
    max_memory: int | None = None  # bytes for the index; None: half the machine's memory
    flat_threshold: int = 100_000
    target_recall: float = 0.95
    update: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        check_config(self)  # str or Path for paths; a wrong type fails here, by name


def preflight(config: IndexConfig) -> None:
    """Refuse an output that cannot be written and a folder with no embeddings.

    Raises:
        InputError: the output is in the way; the embeddings folder is missing, a file, or
            holds no shards.
    """
    check_output(config.out_dir, folder=True)  # before minutes of training and adding
    if not store.list_shards(Path(config.emb_dir)):
        raise store.no_embeddings(config.emb_dir)
