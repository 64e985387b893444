"""``clipkit zeroshot``: label images by their similarity to prompt-ensembled class embeddings.

Probabilities are the softmax over the model's scaled similarities (``exp(logit_scale) * cos``,
as in open_clip), so the result equals open_clip's ``build_zero_shot_classifier`` + argmax; for
a model trained with SigLIP's loss (it has a ``logit_bias``), each class's own sigmoid
``σ(t·cos + b)``, as that model was trained to give them.
With ground truth (a class tree) it adds metrics; with a threshold on the top probability
(given, or calibrated on known images) low-confidence images become ``unknown``.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from clipkit import store
from clipkit.config import DEFAULT_MODEL_SPEC, Runtime
from clipkit.errors import InputError, SkippedInputsError, UsageError
from clipkit.infra.fields import check_config
from clipkit.infra.progress import ProgressCallback, ProgressReport
from clipkit.inputs.classes import class_tree_of_uris, label_from_folder, read_class_tree
from clipkit.inputs.decode import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES
from clipkit.inputs.filenames import as_text, locate, reading_base
from clipkit.inputs.sources import Kind, SourceOptions, discover
from clipkit.models.runtime import (
    RuntimeChoice,
    load_encoder,
    load_matching_encoder,
)
from clipkit.models.specs import ChoosesAModel
from clipkit.score.arrays import as_numpy
from clipkit.score.metrics import ClassificationMetrics, calibrate_threshold, classification_metrics
from clipkit.score.zeroshot import class_embeddings, classify
from clipkit.store.reports import write_report
from clipkit.zeroshot.classes import (
    LabelSpec,
    check_labels,
    parse_labels,
    prompts_for,
    read_labels_file,
    read_templates,
)

UNKNOWN = "unknown"
METRICS_K = 5


@dataclass(frozen=True)
class ZeroShotConfig(ChoosesAModel):
    """What to classify, into which labels, with which prompts and model."""

    images: Path  # a folder, a class-per-subfolder tree, or an embeddings folder
    class_tree: bool = False  # score against the subfolders (implied when labels name them all)
    labels: str | None = None  # inline, comma-separated
    labels_file: Path | None = None
    templates: str = "simple"  # simple | openai | a file path
    model: str | None = None  # default: the embeddings' model, else default_model
    default_model: str = DEFAULT_MODEL_SPEC  # for inputs no artifact records (images, tables)
    k: int = 5
    reject_threshold: float | None = None
    calibrate: Path | None = None  # known images to set the threshold from
    false_reject: float = 0.05  # target share of known images rejected when calibrating
    batch_size: int = 64
    workers: int | None = None  # decode processes; None: one per core, at most 8
    device: str = "auto"
    include_hidden: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    strict: bool = False  # raise SkippedInputsError, after the work, if any image was skipped
    runtime: Runtime | None = None  # None: $CLIPKIT_RUNTIME, else auto

    def __post_init__(self) -> None:
        check_config(self)  # str or Path for paths; a wrong type fails here, by name


@dataclass(frozen=True)
class Prediction:
    """One image: its label (or ``unknown``), the top label's probability, the top k."""

    uri: str
    id: str
    label: str
    confidence: float
    top: tuple[tuple[str, float], ...]  # (label, probability), best first
    target: str | None = None  # the true label, when known
    path: str = ""  # the uri as a path that opens from here (see clipkit.inputs.filenames.locate)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "top": [{"label": t, "probability": p} for t, p in self.top]}


@dataclass(frozen=True)
class Rejection:
    """How the open-set threshold was set, and what it did."""

    threshold: float  # top probability below this -> unknown
    method: str  # "given" or "calibrated"
    rejected: int
    calibration_images: int = 0
    target_false_reject: float | None = None
    calibration_false_reject: float | None = None  # realised on the calibration images


@dataclass(frozen=True)
class ZeroShotResult:
    model: str
    source: str
    input_kind: str  # "folder", "class tree" or "embeddings"
    labels: tuple[str, ...]
    prompts: int
    templates: str
    logit_scale: float  # the factor applied to cosine similarities before the softmax
    predictions: tuple[Prediction, ...]
    metrics: ClassificationMetrics | None
    rejection: Rejection | None
    failures: tuple[tuple[str, str, str], ...]
    notes: tuple[str, ...] = ()
    runtime: RuntimeChoice = RuntimeChoice("torch", "")
    logit_bias: float | None = None  # SigLIP's b: probabilities are σ(t·cos + b) per class

    @property
    def probabilities(self) -> str:
        """How the probabilities were computed, in words."""
        if self.logit_bias is None:
            return "softmax over the labels"
        return "sigmoid σ(t·cos + b) of each label on its own (a SigLIP model's own)"

    @functools.cached_property  # sorted once: the CLI and reports ask several times
    def distribution(self) -> list[tuple[str, int]]:
        """(label, images predicted as it), most frequent first; every label listed."""
        counts = Counter(p.label for p in self.predictions)
        names = [*self.labels, *([UNKNOWN] if counts[UNKNOWN] else [])]
        return sorted(((name, counts[name]) for name in names), key=lambda item: -item[1])

    def as_dict(self) -> dict[str, Any]:
        return {
            **{
                key: getattr(self, key)
                for key in (
                    "model",
                    "source",
                    "input_kind",
                    "prompts",
                    "templates",
                    "logit_scale",
                    "logit_bias",
                    "probabilities",
                    "notes",
                )
            },
            "runtime": self.runtime.runtime,
            "labels": list(self.labels),
            "distribution": dict(self.distribution),
            "metrics": self.metrics.as_dict() if self.metrics else None,
            "rejection": asdict(self.rejection) if self.rejection else None,
            "failures": [
                dict(zip(("uri", "stage", "error"), f, strict=True)) for f in self.failures
            ],
            "predictions": [p.as_dict() for p in self.predictions],
        }


@dataclass(frozen=True)
class _Images:
    """Encoded images of one input, and their true labels when the input is a class tree."""

    kind: str
    vectors: np.ndarray  # (N, D) float32, unit norm
    uris: list[str]
    ids: list[str]
    truth: list[str] | None
    failures: list[tuple[str, str, str]]


def zeroshot(config: ZeroShotConfig, progress: ProgressCallback | None = None) -> ZeroShotResult:
    """Classify the images of ``config.images`` among the labels.

    Raises:
        InputError: no images, fewer than two or duplicate labels, bad templates or options.
    """
    result = _zeroshot(config, progress)
    if config.strict and result.failures:
        raise SkippedInputsError(len(result.failures), None, result)
    return result


def _zeroshot(config: ZeroShotConfig, progress: ProgressCallback | None) -> ZeroShotResult:
    _check_options(config)
    source = _existing(config.images, "IMAGES")
    kind = _input_kind(source, config.include_hidden)
    given = _given_labels(config)
    # Before loading the model: fail fast. Without labels a plain folder has nothing to classify
    # into, so that is said before it is walked; a tree's subfolders are read first.
    if kind == "folder" and given is None:
        _no_labels(source, ())
    listing = _as_class_tree_or_not(_list_images(source, kind, config), given, config.class_tree)
    labels = _labels(config, given, listing)
    templates = read_templates(config.templates)
    prompts = prompts_for(labels, templates)
    known = _list_images(*_calibration_input(config), config) if config.calibrate else None
    encoder, runtime = _encoder(config, source if kind == "embeddings" else None)
    weights = class_embeddings(encoder.encode_texts, prompts)
    names = [label.name for label in labels]

    images = _encode(encoder, listing, config, progress, "images")
    if not images.uris:
        shown = "; ".join(f"{uri} ({stage}: {error})" for uri, stage, error in images.failures[:3])
        raise InputError(
            f"No image in {source} could be read: {shown}"
            + (" …" if len(images.failures) > 3 else "")
            + ".",
            "Fix or remove the unreadable files.",
        )
    kept = min(max(config.k, METRICS_K), len(names))
    bias = encoder.logit_bias  # SigLIP: each label its own sigmoid
    probabilities, indices = classify(images.vectors, weights, encoder.logit_scale, kept, bias=bias)
    threshold, rejection = _threshold(config, encoder, weights, known, progress)
    base = reading_base(store.read_base(source)) if kind == "embeddings" else None
    predictions = _predictions(names, images, probabilities, indices, threshold, config.k, base)
    metrics, notes = _metrics(names, images, indices)
    if rejection is not None:
        rejected = sum(p.label == UNKNOWN for p in predictions)
        rejection = Rejection(**{**asdict(rejection), "rejected": rejected})
    return ZeroShotResult(
        model=encoder.spec,
        source=as_text(source),
        input_kind=listing.kind,
        labels=tuple(names),
        prompts=sum(len(p) for p in prompts),
        templates=config.templates,
        logit_scale=encoder.logit_scale,
        predictions=tuple(predictions),
        metrics=metrics,
        rejection=rejection,
        failures=tuple(images.failures),
        notes=tuple(notes),
        runtime=runtime,
        logit_bias=bias,
    )


def _predictions(
    names: Sequence[str],
    images: _Images,
    probabilities: np.ndarray,
    indices: np.ndarray,
    threshold: float | None,
    k: int,
    base: str | None,
) -> list[Prediction]:
    predictions = []
    for row, uri in enumerate(images.uris):
        top = [
            (names[i], p)
            for p, i in zip(probabilities[row].tolist(), indices[row].tolist(), strict=True)
        ]
        rejected = threshold is not None and top[0][1] < threshold
        predictions.append(
            Prediction(
                uri=uri,
                id=images.ids[row],
                label=UNKNOWN if rejected else top[0][0],
                confidence=top[0][1],
                top=tuple(top[:k]),
                target=images.truth[row] if images.truth else None,
                path=locate(uri, base),
            )
        )
    return predictions


def prediction_rows(result: ZeroShotResult) -> list[dict[str, Any]]:
    """One flat row per image: uri, id, label, confidence, target, path, label_1,
    probability_1, ..."""
    rows = []
    for p in result.predictions:
        row: dict[str, Any] = {
            "uri": p.uri,
            "id": p.id,
            "label": p.label,
            "confidence": p.confidence,
            "target": p.target,
            "path": p.path,
        }
        for rank, (label, probability) in enumerate(p.top, 1):
            row[f"label_{rank}"], row[f"probability_{rank}"] = label, probability
        rows.append(row)
    return rows


def write_predictions(result: ZeroShotResult, path: Path) -> Path:
    """Write the predictions as CSV, JSON (the whole result), JSONL or Parquet, by suffix."""
    return write_report(path, prediction_rows(result), whole=result.as_dict())


def _check_options(config: ZeroShotConfig) -> None:
    config.given_spec  # noqa: B018 - parsed once, before any heavy import: a typo fails here
    if config.k < 1:
        raise UsageError(f"-k must be at least 1, got {config.k}.", "Ask for 1 or more labels.")
    if config.reject_threshold is not None and config.calibrate is not None:
        raise UsageError(
            "Give --reject-threshold or --calibrate, not both.",
            "--calibrate derives the threshold from known images.",
        )
    if config.reject_threshold is not None and not 0 < config.reject_threshold <= 1:
        raise UsageError(
            f"--reject-threshold must lie in (0, 1], got {config.reject_threshold}.",
            "It is a probability: the top label's softmax score.",
        )
    if not 0 <= config.false_reject < 1:
        raise UsageError(
            f"--false-reject must lie in [0, 1), got {config.false_reject}.",
            "e.g. 0.05 rejects about 5 % of known images.",
        )


def _existing(path: Path, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"{what} {path} does not exist.", "Check the path.")
    return path


def _input_kind(path: Path, include_hidden: bool) -> str:
    """ "embeddings" (Parquet shards), "class tree" (only subfolders of images) or "folder"."""
    if not path.is_dir():
        return "folder"
    if store.list_shards(path):
        return "embeddings"
    children = [c for c in path.iterdir() if include_hidden or not c.name.startswith(".")]
    if any(c.is_file() and c.suffix.lower() in IMAGE_SUFFIXES for c in children):
        return "folder"
    with_images = [c for c in children if c.is_dir() and _has_image(c)]
    return "class tree" if len(with_images) >= 2 else "folder"


def _has_image(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.rglob("*") if p.is_file())


def _given_labels(config: ZeroShotConfig) -> tuple[list[LabelSpec], str] | None:
    """The labels the user gave and where (for messages), or None when none were given."""
    if config.labels is not None and config.labels_file is not None:
        raise UsageError("Give --labels or --labels-file, not both.", "Put all labels in one.")
    if config.labels is not None:
        return parse_labels(config.labels), "--labels"
    if config.labels_file is not None:
        return read_labels_file(config.labels_file), str(config.labels_file)
    return None


def _as_class_tree_or_not(
    listing: _Listing, given: tuple[list[LabelSpec], str] | None, class_tree: bool
) -> _Listing:
    """The listing with its subfolders as ground truth only when the user means them so.

    Subfolders are often albums, not classes (``2024-summer/``, ``misc/``): they are the truth
    with ``--class-tree``, or when every label given names one of them; otherwise the images
    are classified with no truth, and no labels at all is a usage error.
    """
    if not listing.tree_labels:
        if class_tree:
            raise InputError(
                f"--class-tree: {listing.source} is not a class tree (two or more subfolders "
                "holding every image).",
                "Lay images out as ROOT/<label>/<image>, or drop --class-tree.",
            )
        return listing
    folders = {_folded(name) for name in listing.tree_labels}
    if class_tree or (given and given[0] and all(_folded(x.name) in folders for x in given[0])):
        return listing
    if given is None:
        _no_labels(listing.source, listing.tree_folders)
    kind = "embeddings" if listing.kind == "embeddings" else "folder"
    return _Listing(listing.source, kind, listing.paths, rows=listing.rows)


def _folded(label: str) -> str:
    return label_from_folder(label).casefold()


def _no_labels(source: Path, folders: Sequence[str]) -> NoReturn:
    hint = 'Pass --labels "cat,dog,car" or --labels-file FILE (one label per line)'
    if folders:
        shown = ", ".join(folders[:6]) + (" …" if len(folders) > 6 else "")
        raise UsageError(
            f"No labels given. The subfolders of {source} ({shown}) are taken as classes only "
            "when you say so.",
            hint + "; or --class-tree if each subfolder is a class with its images as truth.",
        )
    raise UsageError(f"No labels given to classify the images of {source} into.", hint + ".")


def _labels(
    config: ZeroShotConfig, given: tuple[list[LabelSpec], str] | None, listing: _Listing
) -> list[LabelSpec]:
    if given is not None:
        labels, where = given
    else:
        labels = [LabelSpec(name) for name in listing.tree_labels]
        where = listing.tree_origin
    check_labels(labels, where)
    open_set = config.reject_threshold is not None or config.calibrate is not None
    if open_set and any(label.name.casefold() == UNKNOWN for label in labels):
        raise InputError(
            f"{UNKNOWN!r} is the open-set label and cannot be a class too.",
            "Rename that label, or drop --reject-threshold/--calibrate.",
        )
    return labels


def _encoder(config: ZeroShotConfig, embeddings: Path | None) -> tuple[Any, RuntimeChoice]:
    """The model (the one that made ``embeddings``, if given), on the runtime asked for."""
    if embeddings is None:
        return load_encoder(
            config.chosen_spec, device=config.device, runtime=config.runtime, bulk=True
        )
    stamp = store.read_stamp(embeddings)
    assert stamp is not None  # the folder has shards
    return load_matching_encoder(
        stamp.spec,
        stamp.fingerprint,
        spec=config.given_spec,
        device=config.device,
        runtime=config.runtime,
    )


@dataclass(frozen=True)
class _Listing:
    """The images of one input, not yet encoded: files, or an embeddings folder's rows, with
    their true labels when they come from a class tree."""

    source: Path
    kind: str
    paths: list[str]
    truth: list[str] | None = None
    tree_labels: tuple[str, ...] = ()  # the class folders' labels, in folder order
    tree_origin: str = ""  # where those labels came from, for messages
    tree_folders: tuple[str, ...] = ()  # the class folders' names on disk, in the same order
    rows: store.VectorBlock | None = None  # an embeddings folder's image rows, copies included


def _list_images(source: Path, kind: str, config: ZeroShotConfig) -> _Listing:
    if kind == "embeddings":
        rows = store.with_aliases(store.read_vectors(source, "image"), source)
        if not rows.ids:
            raise InputError(
                f"{source} holds no image embeddings.",
                "Embed images with clipkit embed, or pass the image folder.",
            )
        tree = class_tree_of_uris(rows.uris)
        if tree is None:
            return _Listing(source, kind, [], rows=rows)
        return _Listing(
            source,
            kind,
            [],
            [tree.labels[t] for t in tree.targets],
            tree.labels,
            f"class folders of {tree.root}, in the uris of {source}",
            tree.folders,
            rows,
        )
    if kind == "class tree":
        tree = read_class_tree(source, include_hidden=config.include_hidden)
        return _Listing(
            source,
            kind,
            list(tree.images),
            [tree.labels[t] for t in tree.targets],
            tree.labels,
            f"subfolders of {source}",
            tree_folders=tree.folders,
        )
    options = SourceOptions(kind=Kind.IMAGE, include_hidden=config.include_hidden)
    try:
        items = discover([source], options).items
    except InputError:
        raise InputError(
            f"{source} holds no images to classify.",
            "Images: " + ", ".join(sorted(IMAGE_SUFFIXES)) + ".",
        ) from None
    return _Listing(source, kind, [item.path or item.uri for item in items])


def _calibration_input(config: ZeroShotConfig) -> tuple[Path, str]:
    assert config.calibrate is not None
    folder = _existing(config.calibrate, "--calibrate folder")
    return folder, _input_kind(folder, config.include_hidden)


def _encode(
    encoder: Any,
    listing: _Listing,
    config: ZeroShotConfig,
    progress: ProgressCallback | None,
    stage: str,
) -> _Images:
    if listing.rows is not None:
        return _embedded_images(encoder, listing)
    from clipkit.inputs.pipeline import default_workers, encode_image_files

    paths, truth = listing.paths, listing.truth
    encoded = encode_image_files(
        encoder,
        paths,
        batch_size=config.batch_size,
        workers=default_workers() if config.workers is None else config.workers,
        max_pixels=config.max_pixels,
        progress=(lambda done: progress(ProgressReport(stage, done, len(paths))))
        if progress
        else None,
    )
    return _Images(
        listing.kind,
        as_numpy(encoded.vectors),
        [paths[r] for r in encoded.rows],
        encoded.ids,
        [truth[r] for r in encoded.rows] if truth else None,
        encoded.failures,
    )


def _embedded_images(encoder: Any, listing: _Listing) -> _Images:
    stamp = store.read_stamp(listing.source)
    if stamp is None or stamp.fingerprint != encoder.fingerprint:
        raise InputError(
            f"{listing.source} was made by {stamp.spec if stamp else 'no model'}, "
            f"not {encoder.spec}.",
            "Use embeddings made by the same model, or pass the image folder.",
        )
    rows = listing.rows
    assert rows is not None
    return _Images("embeddings", rows.vectors, rows.uris, rows.ids, listing.truth, [])


def _threshold(
    config: ZeroShotConfig,
    encoder: Any,
    weights: np.ndarray,
    known: _Listing | None,
    progress: ProgressCallback | None,
) -> tuple[float | None, Rejection | None]:
    if config.reject_threshold is not None:
        return config.reject_threshold, Rejection(config.reject_threshold, "given", 0)
    if known is None:
        return None, None
    images = _encode(encoder, known, config, progress, "calibration images")
    bias = encoder.logit_bias  # SigLIP: each label its own sigmoid
    probabilities, _ = classify(images.vectors, weights, encoder.logit_scale, 1, bias=bias)
    confidences = probabilities[:, 0].tolist()
    threshold = calibrate_threshold(confidences, config.false_reject)
    realised = sum(c < threshold for c in confidences) / len(confidences)
    return threshold, Rejection(
        threshold, "calibrated", 0, len(confidences), config.false_reject, realised
    )


def _metrics(
    names: Sequence[str], images: _Images, indices: np.ndarray
) -> tuple[ClassificationMetrics | None, list[str]]:
    if images.truth is None:
        return None, []
    position = {name.casefold(): i for i, name in enumerate(names)}
    missing = sorted({t for t in images.truth if t.casefold() not in position})
    if missing:
        note = (
            f"No metrics: class folders {', '.join(missing)} are not among the labels "
            f"(name every folder's class to score against the folders)."
        )
        return None, [note]
    targets = [position[t.casefold()] for t in images.truth]
    return classification_metrics(names, targets, indices.tolist(), METRICS_K), []
