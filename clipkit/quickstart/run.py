"""The offline quickstart: generated shapes, then train, embed, index, search, zeroshot, audit.

Every step calls the same service as its command (``train``, ``embed``, ``build_index``,
``search``, ``zeroshot``, ``audit``) and the same report writers, so a quickstart that works is
evidence that the commands work. Each step is scored against chance, with the ground truth that
the generated data carries (the caption of every image, the class of every tree image, the
captions that were swapped), so "it ran" and "it learned something" are both visible.

Re-running reuses what exists: the data folders (written atomically), the training run
(resumed, or returned as finished), the embeddings (resumable); the cheap steps run again.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from clipkit.audit.run import AuditConfig, audit
from clipkit.embed.run import EmbedConfig, embed
from clipkit.errors import InputError, StoppedError
from clipkit.index.build import IndexConfig, build_index
from clipkit.infra.atomic import atomic_path, make_folder
from clipkit.infra.fields import check_config
from clipkit.infra.progress import ProgressCallback
from clipkit.inputs import synthetic
from clipkit.models.runtime import ensure_cached_export
from clipkit.report.html import (
    OverviewCard,
    write_audit_report,
    write_overview,
    write_search_gallery,
    write_zeroshot_report,
)
from clipkit.search.run import SearchConfig, SearchResult, search
from clipkit.store.reports import write_report
from clipkit.train.run import TrainConfig, train
from clipkit.zeroshot.run import ZeroShotConfig, write_predictions, zeroshot

MODEL = "clipkit-tiny:random"  # a built-in architecture, trained from scratch: no download
QUERIES = (
    "a red circle",
    "a blue square",
    "a yellow triangle",
    "a small green circle",
    "a large red square on a black background",
)
SETTINGS_FILE = "quickstart.json"


@dataclass(frozen=True)
class QuickstartConfig:
    """Where to work and how big the generated problem is (the defaults take ~3 min on 2 CPUs)."""

    folder: Path = Path("clipkit-quickstart")
    train_pairs: int = 1000
    val_pairs: int = 200
    per_class: int = 12  # images per colour in the zero-shot tree
    swap: float = 0.1  # share of the audit copy's captions swapped
    epochs: int = 12
    batch_size: int = 64
    k: int = 8  # search results per query
    workers: int | None = None  # decode processes; None: one per core, at most 8
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        check_config(self)  # str or Path for paths; a wrong type fails here, by name


@dataclass(frozen=True)
class StepReport:
    """One step: what it found (``summary``), its score and chance level, where its files are."""

    name: str
    summary: str
    score: float | None  # the step's quality figure (None: the step only moves data)
    chance: float | None  # the same figure for a model that guesses
    artifacts: tuple[str, ...]
    reused: bool = False
    seconds: float = 0.0  # set by the runner, which times every step the same way

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class QuickstartResult:
    folder: str
    steps: tuple[StepReport, ...]
    overview: str  # the HTML page that links every report

    @property
    def seconds(self) -> float:
        return sum(step.seconds for step in self.steps)


def quickstart(
    config: QuickstartConfig,
    progress: ProgressCallback | None = None,
    on_step: Callable[[StepReport], None] | None = None,
) -> QuickstartResult:
    """Run every step in ``config.folder``; ``on_step`` hears about each one as it finishes.

    Raises:
        InputError: the folder holds a quickstart made with other settings, or any step's own
            errors (a step never runs on the artifacts of a failed one).
    """
    folder = Path(config.folder).expanduser()
    _check_settings(folder, config)
    steps: list[StepReport] = []

    def run(step: Callable[[], StepReport]) -> StepReport:
        started = time.perf_counter()
        report = replace(step(), seconds=time.perf_counter() - started)
        steps.append(report)
        if on_step is not None:
            on_step(report)
        return report

    run(lambda: _data(folder, config))
    model = run(lambda: _train(folder, config, progress)).artifacts[0]
    run(lambda: _embed_and_index(folder, config, model, progress))
    run(lambda: _search(folder, config))
    run(lambda: _zeroshot(folder, config, model, progress))
    run(lambda: _audit(folder, config, model, progress))
    overview = write_overview(
        folder / "reports" / "index.html",
        "clipkit quickstart",
        [
            OverviewCard(step.name, step.summary, [Path(a) for a in step.artifacts])
            for step in steps
        ],
    )
    return QuickstartResult(folder=str(folder), steps=tuple(steps), overview=str(overview))


def _check_settings(folder: Path, config: QuickstartConfig) -> None:
    """Refuse to mix a new configuration with the data and run of an earlier one."""
    wanted = {
        key: value
        for key, value in asdict(config).items()
        if key not in ("folder", "workers", "device")
    }
    saved = folder / SETTINGS_FILE
    if saved.is_file():
        found = json.loads(saved.read_text(encoding="utf-8"))
        if found != wanted:
            changed = sorted(key for key in wanted if found.get(key) != wanted[key])
            raise InputError(
                f"{folder} holds a quickstart made with other settings ({', '.join(changed)}).",
                "Re-run with the same options, or give another folder (or delete this one).",
            )
        return
    if folder.is_dir() and any(folder.iterdir()):  # never write into someone's own files
        raise InputError(
            f"{folder} is not empty and holds no quickstart.", "Give a new or empty folder."
        )
    make_folder(folder)
    with atomic_path(saved) as tmp:
        tmp.write_text(json.dumps(wanted, indent=2), encoding="utf-8")


def _data(folder: Path, config: QuickstartConfig) -> StepReport:
    data = folder / "data"
    parts: dict[str, Callable[[Path], Any]] = {
        "train": lambda out: synthetic.write_captioned_shapes(
            out, config.train_pairs, seed=config.seed
        ),
        "val": lambda out: synthetic.write_captioned_shapes(
            out, config.val_pairs, seed=config.seed + 1
        ),
        "classes": lambda out: synthetic.write_class_tree(
            out, config.per_class, seed=config.seed + 2
        ),
        "query": lambda out: synthetic.write_captioned_shapes(out, 1, seed=config.seed + 3),
        "audit": lambda out: _audit_copy(data / "val", out, config),
    }
    reused = all((data / name).is_dir() for name in parts)
    for name, write in parts.items():
        _write_once(data / name, write)
    colours = len(synthetic.COLOURS)
    summary = (
        f"{config.train_pairs} training and {config.val_pairs} validation pairs, "
        f"{colours * config.per_class} images in {colours} colour classes, a copy of "
        f"the validation pairs with {len(_swapped(folder))} captions swapped"
    )
    return StepReport("data", summary, None, None, (str(data),), reused)


def _write_once(out: Path, write: Callable[[Path], Any]) -> None:
    """Write a data folder through a temporary sibling, so a half-written one never counts."""
    if out.is_dir():
        return
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    write(partial)
    partial.rename(out)


def _audit_copy(val: Path, out: Path, config: QuickstartConfig) -> None:
    shutil.copytree(val, out)
    swapped = synthetic.swap_captions(out, config.swap, seed=config.seed + 4)
    names = [path.name for path in swapped]
    (out.parent / "audit-swapped.json").write_text(json.dumps(names), encoding="utf-8")


def _swapped(folder: Path) -> set[str]:
    return set(json.loads((folder / "data" / "audit-swapped.json").read_text(encoding="utf-8")))


def _train(folder: Path, config: QuickstartConfig, progress: ProgressCallback | None) -> StepReport:
    run, data = folder / "run", folder / "data"
    train_config = TrainConfig(
        data=str(data / "train"),
        val=str(data / "val"),
        eval_classes=str(data / "classes"),
        out=str(run),
        model=MODEL,
        epochs=config.epochs,
        batch_size=config.batch_size,
        workers=config.workers,
        device=config.device,
        seed=config.seed,
        resume=(run / "config.json").is_file(),
    )
    # The quickstart's settings are its own: a short-run note would ask the user to change
    # what they did not choose.
    report = (
        (lambda r: None if r.note else progress(replace(r, stage=f"train ({r.stage})")))
        if progress
        else None
    )
    result = train(train_config, progress=report)
    if result.interrupted or result.best_checkpoint is None:
        raise StoppedError(
            "Training stopped early; its last checkpoint is saved in the run.",
            f"Run `clipkit quickstart {folder}` again to continue it.",
        )
    recall, chance = result.evaluations[-1].image_to_text_r1, 1 / result.val_pairs
    summary = (
        f"{MODEL} trained from scratch for {config.epochs} epochs: the true caption "
        f"ranks first of {result.val_pairs} validation captions for {recall:.0%} of "
        f"the images (chance {chance:.1%})"
    )
    artifacts = (result.best_checkpoint, *([result.plot] if result.plot else []))
    return StepReport("train", summary, recall, chance, artifacts, result.already_finished)


def _embed_and_index(
    folder: Path, config: QuickstartConfig, model: str, progress: ProgressCallback | None
) -> StepReport:
    embedded = embed(
        EmbedConfig(
            sources=(str(folder / "data" / "val"),),
            out_dir=folder / "embeddings",
            model=model,
            workers=config.workers,
            device=config.device,
        ),
        progress,
    )
    index = build_index(
        IndexConfig(emb_dir=folder / "embeddings", out_dir=folder / "index", kind="image")
    )
    # As `clipkit index` does: the model's ONNX export in the cache, so that a search of this
    # index (the quickstart's own, and the user's next) starts without torch.
    export, _ = ensure_cached_export(index.info.model, index.info.fingerprint)
    summary = (
        f"{embedded.embedded} rows embedded ({embedded.already_present} already there), "
        f"{index.info.rows} images indexed ({index.info.factory})"
        + ("; model exported to ONNX for fast search" if export is not None else "")
    )
    return StepReport(
        "embed + index",
        summary,
        None,
        None,
        (str(folder / "embeddings"), str(folder / "index"), *([str(export)] if export else [])),
        embedded.embedded == 0,
    )


def _search(folder: Path, config: QuickstartConfig) -> StepReport:
    """Text queries and one image query; a hit is relevant when its caption has the query's
    attributes (for the image query: the generated query image's colour and shape)."""
    data, index = folder / "data", folder / "index"
    by_text = search(
        SearchConfig(texts=QUERIES, batch=True, index_dir=index, k=config.k, device=config.device)
    )
    query_image = sorted((data / "query").glob("*.png"))[0]
    by_image = search(
        SearchConfig(images=(query_image,), index_dir=index, k=config.k, device=config.device)
    )
    query_words = query_image.with_suffix(".txt").read_text(encoding="utf-8").split()
    wanted = [_attributes(text.split()) for text in QUERIES]
    wanted.append({w for w in query_words if w in synthetic.COLOURS or w in synthetic.SHAPES})
    result = SearchResult(by_text.results + by_image.results, by_text.model, by_text.source)
    captions = [p.read_text(encoding="utf-8").split() for p in sorted((data / "val").glob("*.txt"))]
    relevant = [
        sum(want <= set(_caption_of(hit.path)) for hit in query.hits) / max(len(query.hits), 1)
        for want, query in zip(wanted, result.results, strict=True)
    ]
    chance = [sum(want <= set(words) for words in captions) / len(captions) for want in wanted]
    precision, base = sum(relevant) / len(relevant), sum(chance) / len(chance)
    page = write_search_gallery(result, folder / "reports" / "search.html")
    summary = (
        f"{len(QUERIES)} text queries and 1 image query: {precision:.0%} of the top "
        f"{config.k} hits have the asked-for attributes (chance {base:.0%})"
    )
    return StepReport("search", summary, precision, base, (str(page),))


def _attributes(words: list[str]) -> set[str]:
    known = {*synthetic.COLOURS, *synthetic.SHAPES, *synthetic.SIZES, *synthetic.BACKGROUNDS}
    return {word for word in words if word in known}


def _caption_of(path: str) -> list[str]:
    return Path(path).with_suffix(".txt").read_text(encoding="utf-8").split()


def _zeroshot(
    folder: Path, config: QuickstartConfig, model: str, progress: ProgressCallback | None
) -> StepReport:
    result = zeroshot(
        ZeroShotConfig(
            images=folder / "data" / "classes",
            class_tree=True,
            model=model,
            workers=config.workers,
            device=config.device,
        ),
        progress,
    )
    assert result.metrics is not None  # a class tree always has ground truth
    table = write_predictions(result, folder / "reports" / "zeroshot.csv")
    pages = [*write_zeroshot_report(result, folder / "reports" / "zeroshot.html"), table]
    top1, chance = result.metrics.top1, 1 / len(result.labels)
    summary = (
        f"{len(result.predictions)} images into {len(result.labels)} colours "
        f"({', '.join(result.labels)}): top-1 {top1:.0%} (chance {chance:.0%})"
    )
    return StepReport("zeroshot", summary, top1, chance, tuple(str(p) for p in pages))


def _audit(
    folder: Path, config: QuickstartConfig, model: str, progress: ProgressCallback | None
) -> StepReport:
    result = audit(
        AuditConfig(
            data=folder / "data" / "audit",
            model=model,
            workers=config.workers,
            device=config.device,
        ),
        progress,
    )
    table = write_report(
        folder / "reports" / "audit.csv", [pair.as_dict() for pair in result.pairs]
    )
    pages = [*write_audit_report(result, folder / "reports" / "audit.html"), table]
    swapped, flagged = _swapped(folder), result.flagged
    found = sum(Path(pair.image).name in swapped for pair in flagged)
    precision = found / len(flagged) if flagged else 0.0
    chance = len(swapped) / len(result.pairs)  # precision of flags drawn at random
    estimate, _, _ = result.calibration.mismatched_pairs(len(result.pairs))
    summary = (
        f"about {estimate} of {len(result.pairs)} pairs look mismatched (truth "
        f"{len(swapped)}); {len(flagged)} flagged, {found} of them among those with swapped "
        f"captions: precision {precision:.0%} (chance {chance:.0%}), recall "
        f"{found / max(len(swapped), 1):.0%}"
    )
    return StepReport("audit", summary, precision, chance, tuple(str(p) for p in pages))
