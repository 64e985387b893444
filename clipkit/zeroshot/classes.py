"""Class-per-subfolder image trees and zero-shot class embeddings from prompt templates.

Shared by ``clipkit train --eval-classes`` and ``clipkit zeroshot``: a class tree is the
ImageFolder convention (``ROOT/<label>/**/image``), and a class embedding is the normalised
mean of the label's prompts (prompt ensembling, as in the CLIP paper and open_clip).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipkit.errors import InputError
from clipkit.inputs.decode import IMAGE_SUFFIXES
from clipkit.inputs.filenames import as_text
from clipkit.inputs.tarshards import split_member_uri
from clipkit.models.runtime import as_numpy

SIMPLE_TEMPLATES = ("a photo of a {}.",)
TEMPLATE_SETS = ("simple", "openai")


@dataclass(frozen=True)
class LabelSpec:
    """A class name and, optionally, its own prompts (which then replace the templates)."""

    name: str
    prompts: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClassTree:
    """Images with known labels: ``images[i]`` belongs to ``labels[targets[i]]``, the label
    of subfolder ``folders[targets[i]]``."""

    root: str
    labels: tuple[str, ...]
    images: tuple[str, ...]
    targets: tuple[int, ...]
    folders: tuple[str, ...] = ()  # the subfolders' names as they are on disk


def class_tree_of_uris(uris: Sequence[str]) -> ClassTree | None:
    """The class tree that image paths were embedded from, when they form one.

    ``uris`` form a tree when, below their deepest common folder, every one lies in a subfolder
    and there are two subfolders or more: the same rule as a class folder given directly, so
    ``zeroshot`` of an embeddings folder scores against the folders its images came from.
    A WebDataset member counts as lying where its shard lies. Returns None otherwise (one
    folder, images beside the subfolders, absolute and relative paths mixed, no images).
    """
    if not uris:
        return None
    files = [member[0] if (member := split_member_uri(uri)) else uri for uri in uris]
    try:
        root = os.path.commonpath([os.path.dirname(file) for file in files]) or os.curdir
    except ValueError:  # absolute and relative paths together
        return None
    folders = []
    for file in files:
        parts = Path(os.path.relpath(file, root)).parts
        if len(parts) < 2 or parts[0] == os.pardir:
            return None  # an image at the root itself
        folders.append(parts[0])
    names = sorted(set(folders))
    if len(names) < 2:
        return None
    position = {name: i for i, name in enumerate(names)}
    return ClassTree(
        root,
        tuple(label_from_folder(name) for name in names),
        tuple(uris),
        tuple(position[folder] for folder in folders),
        tuple(names),
    )


def label_from_folder(name: str) -> str:
    """``golden_retriever`` / ``golden-retriever`` -> ``golden retriever``."""
    return " ".join(name.replace("_", " ").replace("-", " ").split())


def read_class_tree(root: str | Path, *, include_hidden: bool = False) -> ClassTree:
    """Every image below each subfolder of ``root``, labelled by that subfolder.

    Raises:
        InputError: ``root`` is not a folder, or has fewer than two non-empty class folders.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise InputError(f"Class folder {root} does not exist.", "Pass ROOT/<label>/<images>.")
    folders = sorted(
        p for p in root.iterdir() if p.is_dir() and (include_hidden or not p.name.startswith("."))
    )
    labels, images, targets, names = [], [], [], []
    for folder in folders:
        found = _images_below(folder, include_hidden)
        if not found:
            continue
        names.append(as_text(folder.name))
        labels.append(label_from_folder(names[-1]))
        images.extend(found)
        targets.extend([len(labels) - 1] * len(found))
    if len(labels) < 2:
        raise InputError(
            f"{root} holds {len(labels)} class folder(s) with images; classification needs 2+.",
            "Lay images out as ROOT/<label>/<image>, one subfolder per class.",
        )
    return ClassTree(as_text(root), tuple(labels), tuple(images), tuple(targets), tuple(names))


def class_embeddings(
    encode_texts: Callable[[Sequence[str]], Any],
    prompts_per_class: Sequence[Sequence[str]],
) -> np.ndarray:
    """Unit-norm class embeddings (C, D) float32: the normalised mean of each class's prompt
    embeddings.

    Args:
        encode_texts: texts -> unit-norm embeddings (B, D), from either runtime.
        prompts_per_class: for each class, its filled-in prompts (at least one).
    """
    rows = []
    for prompts in prompts_per_class:
        mean = as_numpy(encode_texts(list(prompts))).astype(np.float32).mean(axis=0)
        rows.append(mean / np.linalg.norm(mean))
    return np.stack(rows)


def classify(
    images: Any,
    weights: np.ndarray,
    scale: float,
    k: int,
    chunk: int = 4096,
    bias: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k class probabilities of ``logits = scale * images @ weights.T``.

    A softmax over the classes (CLIP's, as open_clip's zero-shot classifier), or, for a model
    trained with SigLIP's loss (one with a logit ``bias``), each class's own sigmoid
    ``σ(logits + bias)``: the probability that the image matches that class's prompts, as
    the model was trained to give it (the classes' probabilities need not sum to 1). The
    order of the classes is the same either way.

    Args:
        images: (N, D) unit-norm image embeddings (NumPy, or a torch tensor).
        weights: (C, D) unit-norm class embeddings.
        scale: ``exp(logit_scale)`` of the model.
        k: how many classes to keep per image (at most C).
        bias: the model's ``logit_bias`` (SigLIP), or None for the softmax.

    Returns:
        probabilities (N, k) float32 and class indices (N, k) int64, best first; a tie goes
        to the class named first.
    """
    images, weights = as_numpy(images), as_numpy(weights).astype(np.float32)
    k = min(k, weights.shape[0])
    parts_p, parts_i = [np.empty((0, k), np.float32)], [np.empty((0, k), np.int64)]
    for start in range(0, images.shape[0], chunk):
        logits = scale * (images[start : start + chunk].astype(np.float32) @ weights.T)
        if bias is None:
            logits -= logits.max(axis=1, keepdims=True)  # softmax without overflow
            probabilities = np.exp(logits)
            probabilities /= probabilities.sum(axis=1, keepdims=True)
        else:
            probabilities = sigmoid(logits + np.float32(bias))
        best = np.argsort(-logits, axis=1, kind="stable")[:, :k]
        parts_p.append(np.take_along_axis(probabilities, best, axis=1))
        parts_i.append(best.astype(np.int64))
    return np.concatenate(parts_p), np.concatenate(parts_i)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """σ(x) = 1 / (1 + e^-x), without overflow for large |x|."""
    positive = x >= 0
    out = np.empty_like(x)
    out[positive] = 1.0 / (1.0 + np.exp(-x[positive]))
    exp = np.exp(x[~positive])
    out[~positive] = exp / (1.0 + exp)
    return out


def fill_templates(labels: Sequence[str], templates: Sequence[str]) -> list[list[str]]:
    """Every template with ``{}`` replaced by each label: (C lists of T prompts)."""
    return [[template.replace("{}", label) for template in templates] for label in labels]


def parse_labels(text: str) -> list[LabelSpec]:
    """Inline ``--labels "cat,dog,car"``: comma-separated names, blanks ignored."""
    return [LabelSpec(" ".join(part.split())) for part in text.split(",") if part.strip()]


def read_labels_file(path: str | Path) -> list[LabelSpec]:
    """One label per line, or ``label: prompt one | prompt two`` with the class's own prompts.

    Blank lines and lines starting with ``#`` are ignored. A prompt may contain ``{}``, which is
    replaced by the label, like a template.

    Raises:
        InputError: the file is unreadable, or a line has a colon but no label or no prompt.
    """
    lines = _read_lines(path, "labels file")
    specs = []
    for number, line in lines:
        name, colon, rest = line.partition(":")
        prompts = tuple(" ".join(p.split()) for p in rest.split("|") if p.strip())
        if colon and (not name.strip() or not prompts):
            raise InputError(
                f"{path}, line {number}: {line!r} needs a label before ':' and prompts after it.",
                "Write `label` or `label: prompt one | prompt two` on each line.",
            )
        specs.append(LabelSpec(" ".join(name.split()), prompts))
    return specs


def check_labels(labels: Sequence[LabelSpec], where: str) -> None:
    """Classification needs two or more labels, none repeated (ignoring case and spacing).

    Raises:
        InputError: fewer than two labels, or a duplicate.
    """
    if not labels:
        raise InputError(
            f"No labels given ({where}).",
            'Pass --labels "cat,dog,car", --labels-file FILE, or a class folder.',
        )
    if len(labels) == 1:
        raise InputError(
            f"Only one label ({labels[0].name!r}, {where}): every image would get it.",
            "Give two or more labels; for open-set use, add --reject-threshold or --calibrate.",
        )
    seen: dict[str, str] = {}
    repeated = []
    for label in labels:
        key = label.name.casefold()
        if key in seen:
            repeated.append(
                f"{seen[key]!r} and {label.name!r}" if seen[key] != label.name else repr(label.name)
            )
        seen.setdefault(key, label.name)
    if repeated:
        raise InputError(
            f"Duplicate labels ({where}): {', '.join(repeated)}.",
            "Give each class once; merge synonyms into one label's prompts.",
        )


def read_templates(choice: str) -> tuple[str, ...]:
    """``simple``, ``openai`` (the CLIP paper's 80) or a file with one ``{}`` template per line.

    Raises:
        InputError: the file is missing, empty, or has a line without ``{}``.
    """
    if choice == "simple":
        return SIMPLE_TEMPLATES
    if choice == "openai":
        from clipkit.models.openclip import openai_templates

        return openai_templates()
    path = Path(choice).expanduser()
    if not path.is_file():
        raise InputError(
            f"Templates {choice!r} are neither a known set nor a file.",
            "Use --templates simple, openai, or a file with one template per line.",
        )
    lines = _read_lines(path, "templates file")
    for number, line in lines:
        if "{}" not in line:
            raise InputError(
                f"{path}, line {number}: template {line!r} has no {{}} for the label.",
                'Write templates such as "a photo of a {}.".',
            )
    if not lines:
        raise InputError(f"{path} holds no templates.", 'Write one per line: "a photo of a {}."')
    return tuple(line for _, line in lines)


def prompts_for(labels: Sequence[LabelSpec], templates: Sequence[str]) -> list[list[str]]:
    """Each label's own prompts if it has them, else every template filled with the label."""
    return [fill_templates([label.name], label.prompts or templates)[0] for label in labels]


def _read_lines(path: str | Path, what: str) -> list[tuple[int, str]]:
    """(line number, stripped text) of the non-blank, non-comment lines of a UTF-8 file."""
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise InputError(f"Cannot read {what} {path}: {reason}.", "Check the path.") from None
    return [
        (n, line.strip())
        for n, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.strip().startswith("#")
    ]


def _images_below(folder: Path, include_hidden: bool) -> list[str]:
    found = []
    for current, subfolders, files in os.walk(folder):
        if not include_hidden:
            subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        subfolders.sort()
        for name in sorted(files):
            if (include_hidden or not name.startswith(".")) and (
                Path(name).suffix.lower() in IMAGE_SUFFIXES
            ):
                found.append(as_text(Path(current) / name))
    return found
