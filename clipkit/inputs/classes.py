"""Class-per-subfolder image trees (the ImageFolder convention, ``ROOT/<label>/**/image``):
what ``clipkit zeroshot`` scores against, and what ``clipkit train --eval-classes`` evaluates on.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from clipkit.errors import InputError
from clipkit.inputs.decode import IMAGE_SUFFIXES
from clipkit.inputs.filenames import as_text
from clipkit.inputs.tarshards import split_member_uri


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
