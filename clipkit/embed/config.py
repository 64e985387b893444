"""What ``clipkit embed`` is asked to do (``EmbedConfig``) and what a run did (``EmbedResult``),
whichever engine runs it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clipkit.config import Engine, Runtime, StoredPrecision
from clipkit.infra.fields import check_config
from clipkit.inputs.decode import DEFAULT_MAX_PIXELS
from clipkit.inputs.sources import Kind
from clipkit.models.runtime import RuntimeChoice


@dataclass(frozen=True)
class EmbedConfig:
    """What to embed, with which model, and where to write it."""

    sources: tuple[str, ...]
    out_dir: Path
    model: str
    kind: Kind = Kind.AUTO
    batch_size: int = 64
    workers: int | None = None
    device: str = "auto"
    precision: StoredPrecision = "fp32"  # of the vectors written; fp16 halves the folder
    strict: bool = False  # raise SkippedInputsError, after the work, if any input was skipped
    lines: bool = False
    include_hidden: bool = False
    image_column: str | None = None
    text_column: str | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    shard_rows: int = 50_000
    prune: bool = False  # make the folder mirror the sources: drop rows of vanished inputs
    rehash: bool = False  # read every file again, even those whose size and mtime are unchanged
    runtime: Runtime | None = None  # None: $CLIPKIT_RUNTIME, else auto
    # What a new output folder's uris are relative to (None: the working folder); a folder
    # keeps the base its first run recorded.
    base: Path | None = None
    engine: Engine = "local"  # ray: units of work on a Ray cluster's actors (embed.on_ray)
    ray_address: str | None = None  # None: $RAY_ADDRESS, else a Ray started on this machine
    gpus_per_worker: float | None = None  # None: 1 where the cluster has GPUs

    def __post_init__(self) -> None:
        check_config(self)  # str or Path for paths; a wrong type fails here, by name


@dataclass(frozen=True)
class EmbedResult:
    """What a run did; ``failures`` lists (uri, stage, error) for every skipped input."""

    out_dir: Path
    model: str
    fingerprint: str
    embedded: int
    already_present: int
    aliases: int
    failures: tuple[tuple[str, str, str], ...]
    truncated_texts: int
    replaced_texts: int
    ignored_files: int
    shards_written: int
    seconds: float
    device: str
    is_main: bool = True  # False on the other ranks of a torchrun job: they print nothing
    changed: int = 0  # inputs whose content differs from what their uri had when embedded
    pruned: int = 0  # rows removed by --prune (their content is no longer among the inputs)
    moved: int = 0  # rows whose uri --prune pointed at another input with the same content
    filled: int = 0  # rows already present that got pass-through values (a table's, say)
    runtime: RuntimeChoice = RuntimeChoice("torch", "")
    engine: Engine = "local"  # ray: ``device`` names the actors and nodes that ran it

    @property
    def skipped(self) -> int:
        return len(self.failures)

    @property
    def items_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0
