"""Labels and prompts for ``clipkit zeroshot``: labels inline or from a file (each with its
own prompts where given), the template sets, and the prompts of each label. (The class tree
reader is :mod:`clipkit.inputs.classes`; the classifier, :mod:`clipkit.score.zeroshot`.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from clipkit.errors import InputError
from clipkit.score.zeroshot import SIMPLE_TEMPLATES, fill_templates

TEMPLATE_SETS = ("simple", "openai")


@dataclass(frozen=True)
class LabelSpec:
    """A class name and, optionally, its own prompts (which then replace the templates)."""

    name: str
    prompts: tuple[str, ...] = ()


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
