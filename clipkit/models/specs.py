"""The model spec grammar: one string names a model everywhere (pure parsing, no heavy imports).

Forms: ``ARCH`` (default pretrained tag), ``ARCH:TAG``, ``ARCH:random``, ``hf-hub:org/repo``,
``PATH`` (a clipkit checkpoint file or training-run folder) and ``ARCH:PATH`` (a checkpoint that
does not record its architecture, such as one written by open_clip's trainer).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from clipkit.config import CHECKPOINT_SUFFIXES
from clipkit.errors import ModelSpecError

HF_HUB_PREFIX = "hf-hub:"
RANDOM_TAG = "random"


class SpecKind(str, Enum):
    PRETRAINED = "pretrained"  # ARCH or ARCH:TAG; tag None means "the default tag"
    RANDOM = "random"  # ARCH:random
    HF_HUB = "hf-hub"  # hf-hub:org/repo
    CHECKPOINT = "checkpoint"  # PATH or ARCH:PATH (file or training-run folder)


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec. ``text`` is the string the user gave, kept for messages."""

    text: str
    kind: SpecKind
    arch: str | None = None
    tag: str | None = None
    hub_id: str | None = None
    path: Path | None = None

    @property
    def recorded(self) -> str:
        """The spec that artifacts record: ``text``, with a checkpoint's path made absolute, so
        that embeddings and indexes made in one folder load their model from any other."""
        if self.kind is not SpecKind.CHECKPOINT or self.path is None:
            return self.text
        path = os.path.abspath(self.path)
        return f"{self.arch}:{path}" if self.arch else path


class ChoosesAModel:
    """For a command's config with ``model`` (given, or None) and ``default_model`` (for inputs
    no artifact records): each spec parsed once, however many steps of the command ask.

    The parsed specs are cached on the instance, not fields: copy a config with
    ``dataclasses.replace`` (or ``asdict``), not its ``__dict__``.

    Raises (on first use):
        ModelSpecError: a spec that cannot parse.
    """

    model: str | None
    default_model: str

    @functools.cached_property
    def given_spec(self) -> ModelSpec | None:
        """``-m``, parsed; None when it was left out (the artifact's model is used)."""
        return None if self.model is None else parse_spec(self.model)

    @functools.cached_property
    def chosen_spec(self) -> ModelSpec:
        """``-m``, else the default model: for inputs that record none (images, tables)."""
        return self.given_spec or parse_spec(self.default_model)


def as_spec(spec: str | ModelSpec) -> ModelSpec:
    """``spec`` parsed, unless a caller parsed it already: a command parses its spec once and
    hands the :class:`ModelSpec` down.

    Raises:
        ModelSpecError: a string that cannot be a spec.
    """
    return spec if isinstance(spec, ModelSpec) else parse_spec(spec)


def parse_spec(text: str) -> ModelSpec:
    """Parse a model spec string (syntax only: whether the model exists is checked on load).

    Raises:
        ModelSpecError: the string cannot be a spec.
    """
    text = (text or "").strip()
    if not text:
        raise ModelSpecError("Empty model spec.", _FORMS_HINT)
    if text.startswith(HF_HUB_PREFIX):
        hub_id = text[len(HF_HUB_PREFIX) :].strip("/")
        if hub_id.count("/") != 1 or not all(hub_id.split("/")):
            raise ModelSpecError(
                f"{text!r} does not name a Hugging Face repository.",
                "Write it as hf-hub:ORG/REPO, e.g. hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K.",
            )
        return ModelSpec(text, SpecKind.HF_HUB, hub_id=hub_id)
    if Path(text).expanduser().exists():
        return ModelSpec(text, SpecKind.CHECKPOINT, path=Path(text).expanduser())
    arch, sep, rest = (part.strip() for part in text.partition(":"))
    if sep and rest and _looks_like_arch(arch) and _looks_like_path(rest):
        return ModelSpec(text, SpecKind.CHECKPOINT, arch=arch, path=Path(rest).expanduser())
    if _looks_like_path(text):
        return ModelSpec(text, SpecKind.CHECKPOINT, path=Path(text).expanduser())
    if not arch:
        raise ModelSpecError(f"Model spec {text!r} has no architecture name.", _FORMS_HINT)
    if not sep:
        return ModelSpec(text, SpecKind.PRETRAINED, arch=arch)
    if not rest:
        raise ModelSpecError(f"Model spec {text!r} has an empty tag after ':'.", _FORMS_HINT)
    if rest == RANDOM_TAG:
        return ModelSpec(text, SpecKind.RANDOM, arch=arch)
    return ModelSpec(text, SpecKind.PRETRAINED, arch=arch, tag=rest)


def _looks_like_arch(text: str) -> bool:
    return bool(text) and not text.startswith((".", "~", "/", "\\"))


def _looks_like_path(text: str) -> bool:
    # Architecture names may contain '/' (open_clip accepts "ViT-B/32"), so a slash alone does
    # not make a path: an explicit prefix, a checkpoint suffix or an existing file or folder does.
    if text.startswith(("/", "./", "../", "~", ".\\")):
        return True
    if text.lower().endswith(CHECKPOINT_SUFFIXES):
        return True
    return Path(text).expanduser().exists()


_FORMS_HINT = (
    "A model spec is ARCH[:TAG] (e.g. ViT-B-32:laion2b_s34b_b79k), ARCH:random, "
    "hf-hub:ORG/REPO, or a path to a checkpoint file or training-run folder. "
    "List them with: clipkit models"
)
