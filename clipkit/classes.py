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

import torch
import torch.nn.functional as F

from clipkit.decode import IMAGE_SUFFIXES
from clipkit.errors import InputError

SIMPLE_TEMPLATES = ("a photo of a {}.",)


@dataclass(frozen=True)
class ClassTree:
    """Images with known labels: ``images[i]`` belongs to ``labels[targets[i]]``."""

    root: str
    labels: tuple[str, ...]
    images: tuple[str, ...]
    targets: tuple[int, ...]


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
    labels, images, targets = [], [], []
    for folder in folders:
        found = _images_below(folder, include_hidden)
        if not found:
            continue
        labels.append(label_from_folder(folder.name))
        images.extend(found)
        targets.extend([len(labels) - 1] * len(found))
    if len(labels) < 2:
        raise InputError(
            f"{root} holds {len(labels)} class folder(s) with images; classification needs 2+.",
            "Lay images out as ROOT/<label>/<image>, one subfolder per class.",
        )
    return ClassTree(str(root), tuple(labels), tuple(images), tuple(targets))


def class_embeddings(
    encode_texts: Callable[[Sequence[str]], torch.Tensor],
    prompts_per_class: Sequence[Sequence[str]],
) -> torch.Tensor:
    """Unit-norm class embeddings (C, D): the normalised mean of each class's prompt embeddings.

    Args:
        encode_texts: texts -> unit-norm embeddings (B, D).
        prompts_per_class: for each class, its filled-in prompts (at least one).
    """
    rows = []
    for prompts in prompts_per_class:
        rows.append(F.normalize(encode_texts(list(prompts)).float().mean(dim=0), dim=-1))
    return torch.stack(rows)


def fill_templates(labels: Sequence[str], templates: Sequence[str]) -> list[list[str]]:
    """Every template with ``{}`` replaced by each label: (C lists of T prompts)."""
    return [[template.replace("{}", label) for template in templates] for label in labels]


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
                found.append(str(Path(current) / name))
    return found
