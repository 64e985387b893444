"""What ``clipkit audit`` is asked to do, and the checks that need no model (and no torch).

``clipkit audit`` runs :func:`preflight` before it imports the scoring machinery, so a
mistyped path, a missing column or an option out of range is reported at once. The CLI
imports this module for ``--help`` (the flag rule's defaults), so the store and the pair readers
wait until :func:`preflight`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from clipkit.config import DEFAULT_MODEL_SPEC, Runtime
from clipkit.errors import UsageError
from clipkit.infra.fields import check_config
from clipkit.models.specs import ChoosesAModel

LongCaptions = Literal["truncate", "chunk"]  # cut at the context, or score the best window
LONG_CAPTION_MODES: tuple[LongCaptions, ...] = get_args(LongCaptions)
# The default rule: flag the pairs more likely mismatched than not. On bench_audit_grid.py's
# models and swap rates it flagged with precision 0.99-1.00 and recall 0.93-1.00, where the
# shuffled-pair rule at 1 % flagged up to 5x as many pairs (precision 0.17-0.94).
DEFAULT_MIN_PROBABILITY = 0.5
# Below this many pairs the share of mismatched ones rests on a handful of tail pairs (2 of
# 50 swapped were estimated at 0): the probability rule falls back to the --fpr rule at 1 %.
PROBABILITY_MIN_PAIRS = 100
COMPARED_FPR = 0.01  # the share of shuffled pairs the raw-cosine comparison lets pass


@dataclass(frozen=True)
class AuditConfig(ChoosesAModel):
    data: Path  # pairs (folder with .txt sidecars, table, WebDataset) or an embeddings folder
    model: str | None = None  # default: the embeddings' model, else default_model
    default_model: str = DEFAULT_MODEL_SPEC  # for inputs no artifact records (images, tables)
    # flag pairs at least this likely to be mismatched; None: DEFAULT_MIN_PROBABILITY unless
    # fpr or threshold (or fewer than PROBABILITY_MIN_PAIRS pairs)
    min_probability: float | None = None
    fpr: float | None = None  # instead: let this share of shuffled (unrelated) pairs pass
    threshold: float | None = None  # instead: flag cosine below this raw threshold
    max_flags: int | None = None  # flag at most this many, the most suspicious first
    long_captions: LongCaptions = "truncate"
    neighbours: int = 10  # CSLS neighbourhood size
    seed: int = 0
    batch_size: int = 64
    workers: int | None = None
    device: str = "auto"
    include_hidden: bool = False
    image_column: str | None = None
    text_column: str | None = None
    strict: bool = False  # raise SkippedInputsError, after the work, if any pair was skipped
    runtime: Runtime | None = None  # None: $CLIPKIT_RUNTIME, else auto

    def __post_init__(self) -> None:
        check_config(self)  # str or Path for paths; a wrong type fails here, by name


def preflight(config: AuditConfig) -> None:
    """Refuse what is wrong before any heavy import: options, the model spec's syntax, the
    pairs' path and a table's columns.

    Raises:
        UsageError: an option outside its range.
        ModelSpecError: a model spec that cannot parse.
        InputError: a path that does not exist or a table without its columns.
    """
    from clipkit import store  # pyarrow and the pair readers: see the module's docstring
    from clipkit.inputs.pairs import check_pair_source

    _check_options(config)
    config.given_spec  # noqa: B018 - parsed once, before any heavy import: a typo fails here
    path = Path(config.data).expanduser()
    if not (path.is_dir() and store.list_shards(path)):
        check_pair_source(path, image_column=config.image_column, text_column=config.text_column)


def _check_options(config: AuditConfig) -> None:
    if config.threshold is not None and config.fpr is not None:
        raise UsageError(
            "Give --threshold or --fpr, not both.",
            "--fpr calibrates a mismatch threshold; --threshold is a raw cosine.",
        )
    if config.threshold is not None and not -1 <= config.threshold <= 1:
        raise UsageError(
            f"--threshold is a cosine in [-1, 1], got {config.threshold}.",
            "Or leave it out for the default rule (see --help).",
        )
    if config.fpr is not None and not 0 < config.fpr < 1:
        raise UsageError(f"--fpr must lie in (0, 1), got {config.fpr}.", "e.g. --fpr 0.01")
    rules = [config.threshold is not None, config.fpr is not None]
    if config.min_probability is not None and any(rules):
        raise UsageError(
            "Give one of --min-probability, --fpr and --threshold.",
            "Each is a flag rule; --min-probability 0.5 is the default.",
        )
    if config.min_probability is not None and not 0 < config.min_probability <= 1:
        raise UsageError(
            f"--min-probability must lie in (0, 1], got {config.min_probability}.",
            "e.g. 0.5 flags the pairs more likely mismatched than not.",
        )
    if config.max_flags is not None and config.max_flags < 0:
        raise UsageError(f"--max-flags must be 0 or more, got {config.max_flags}.", "e.g. 50")
    if config.long_captions not in LONG_CAPTION_MODES:
        raise UsageError(
            f"--long-captions must be one of {', '.join(LONG_CAPTION_MODES)}.",
            "truncate: cut at the context; chunk: best context-sized window.",
        )
    if config.neighbours < 1:
        raise UsageError("--neighbours must be at least 1.", "The default, 10, suits most data.")
