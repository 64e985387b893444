"""The audited data without its flagged pairs, and the flagged pairs with what the audit
suggests instead: ``clipkit audit DATA --write-clean clean.csv --write-flagged flagged.csv``.

A table keeps every column and row it had, less the flagged rows (rows the audit skipped, an
unreadable image say, are kept and counted: nothing is known against them). A folder, a set of
WebDataset shards or an embeddings folder becomes a table of ``image`` and ``caption``, which
``clipkit train`` reads. Relative image paths are rewritten relative to the written file's
folder, as a table's paths are read, so the file works where it is written; a URL or an
absolute path is kept.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipkit.audit.config import AuditConfig
from clipkit.config import TABLE_SUFFIXES
from clipkit.errors import InputError
from clipkit.infra.atomic import check_output
from clipkit.inputs.filenames import is_url, table_path

# What a flagged row adds to the pair, from the audit's PairAudit.
AUDIT_COLUMNS = (
    "probability",
    "mismatch",
    "cosine",
    "caption_rank",
    "image_rank",
    "suggested_caption",
    "suggested_caption_score",
    "suggested_image",
    "suggested_image_score",
)


@dataclass(frozen=True)
class Written:
    """One table written: where, how many rows, and how many of them the audit skipped."""

    path: Path
    rows: int
    unaudited: int = 0


def check_table_output(path: Path, option: str) -> None:
    """Refuse, before any work, a file that ``clipkit train`` could not read back.

    Raises:
        InputError: an unknown suffix, or a path that cannot be written.
    """
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise InputError(
            f"{option} {path}: cannot tell the table format from its suffix.",
            "End the file name with " + ", ".join(sorted(TABLE_SUFFIXES)) + ".",
        )
    check_output(path)


def write_clean(result: Any, config: AuditConfig, path: Path) -> Written:
    """The audited data less its flagged pairs, as a table at ``path``."""
    flagged = {(p.image, p.caption) for p in result.flagged}
    source = _table_source(result, config)
    if source is None:
        rows = [
            {"image": _relocated(p.image_path or p.image, path), "caption": p.caption}
            for p in result.pairs
            if not p.flagged
        ]
        return _write(path, rows, ["image", "caption"])
    table, image_key, text_key = source
    columns = table.columns
    values = {name: table.values(name) for name in columns}
    keys = _row_keys(table, image_key, text_key)
    audited = {(p.image, p.caption) for p in result.pairs}
    kept, unaudited = [], 0
    for number, key in enumerate(keys):
        if key in flagged:
            continue
        unaudited += key not in audited
        kept.append(_table_row(values, number, image_key, table.path, path))
    return _write(path, kept, columns, unaudited)


def write_flagged(result: Any, config: AuditConfig, path: Path) -> Written:
    """The flagged pairs, worst first, with the audit's scores and suggestions: a table's
    own columns first (each flagged row of it), then the audit's."""
    source, added = _table_source(result, config), _audit_columns(result)
    if source is None:
        rows = [
            {
                "image": _relocated(p.image_path or p.image, path),
                "caption": p.caption,
                **_audit_values(p, added, path, set()),
            }
            for p in result.flagged
        ]
        return _write(path, rows, ["image", "caption", *added])
    table, image_key, text_key = source
    columns = table.columns
    values = {name: table.values(name) for name in columns}
    numbers: dict[tuple[str | None, str], list[int]] = {}
    for number, key in enumerate(_row_keys(table, image_key, text_key)):
        numbers.setdefault(key, []).append(number)
    rows = [
        {
            **_table_row(values, number, image_key, table.path, path),
            **_audit_values(p, added, path, set(columns)),
        }
        for p in result.flagged
        for number in numbers.get((p.image, p.caption), [])
    ]
    named = [_free_name(name, set(columns)) for name in added]
    return _write(path, rows, [*columns, *named])


def _table_source(result: Any, config: AuditConfig) -> tuple[Any, str, str] | None:
    """The input table and its image and caption columns; None for any other source."""
    data = Path(config.data).expanduser()
    if result.input_kind != "pairs" or not data.is_file():
        return None
    if data.suffix.lower() not in TABLE_SUFFIXES:
        return None
    from clipkit.inputs.pairs import pair_columns
    from clipkit.store import read_table

    table = read_table(data)
    image_key, text_key = pair_columns(table.columns, config.image_column, config.text_column, data)
    return table, image_key, text_key


def _row_keys(table: Any, image_key: str, text_key: str) -> list[tuple[str | None, str]]:
    """Each row as the audit names its pair: (image uri, stripped caption)."""
    return [
        (table_path(image, table.path) if image not in (None, "") else None, _caption(text))
        for image, text in zip(table.paths(image_key), table.texts(text_key), strict=True)
    ]


def _caption(text: str | None) -> str:
    return "" if text is None else str(text).strip()


def _table_row(
    values: dict[str, list[Any]], number: int, image_key: str, source: Path, out: Path
) -> dict[str, Any]:
    row = {name: column[number] for name, column in values.items()}
    image = row[image_key]
    if isinstance(image, str) and image and not _fixed(image):
        row[image_key] = _relative_to(table_path(image, source), out)
    return row


def _relocated(path: str, out: Path) -> str:
    """A path relative to the working folder as the table at ``out`` reads it (relative to
    the table's folder); a URL or an absolute path unchanged."""
    return path if _fixed(path) else _relative_to(path, out)


def _fixed(path: str) -> bool:
    return is_url(path) or os.path.isabs(os.path.expanduser(path))


def _relative_to(path: str, out: Path) -> str:
    try:
        return os.path.relpath(os.path.abspath(path), os.path.abspath(out.parent))
    except ValueError:  # no relative path between them (Windows drives)
        return os.path.abspath(path)


def _audit_columns(result: Any) -> tuple[str, ...]:
    """The audit's columns; a SigLIP model's pairs have their match probability too."""
    return AUDIT_COLUMNS + (("match_probability",) if result.logit_bias is not None else ())


def _audit_values(pair: Any, columns: Sequence[str], out: Path, taken: set[str]) -> dict[str, Any]:
    values = {name: getattr(pair, name) for name in columns}
    if values["suggested_image"]:
        values["suggested_image"] = _relocated(values["suggested_image"], out)
    return {_free_name(name, taken): value for name, value in values.items()}


def _free_name(name: str, taken: set[str]) -> str:
    # A table column named like one of the audit's ("cosine", say) keeps its name.
    return f"audit_{name}" if name in taken else name


def _write(
    path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str], unaudited: int = 0
) -> Written:
    from clipkit.store.reports import write_report

    write_report(path, rows, columns=columns)  # the format by suffix, checked before the work
    return Written(path, len(rows), unaudited)
