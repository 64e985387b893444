"""Row reports to files: CSV, JSON, JSONL or Parquet, written atomically, format by suffix."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clipkit import store
from clipkit.config import REPORT_SUFFIXES
from clipkit.errors import InputError
from clipkit.infra.atomic import atomic_path


def report_format(path: Path) -> str:
    """``csv``, ``tsv``, ``json``, ``jsonl`` or ``parquet`` from a path's suffix.

    Raises:
        InputError: any other suffix.
    """
    suffix = path.suffix.lower()
    if suffix not in REPORT_SUFFIXES:
        raise InputError(
            f"Cannot tell the format of {path} from its suffix.",
            "End the file name with " + ", ".join(REPORT_SUFFIXES) + ".",
        )
    return suffix[1:]


def write_report(
    path: Path,
    rows: Sequence[dict[str, Any]],
    *,
    whole: Any = None,
    fmt: str | None = None,
    columns: Sequence[str] | None = None,
) -> Path:
    """Write flat rows (same keys) as ``fmt`` (default: by suffix); JSON writes ``whole``
    (a fuller document) when given, else the list of rows. ``columns`` heads a CSV with no
    rows (a table with nothing left keeps its header)."""
    fmt = fmt or report_format(path)
    if fmt == "parquet":
        store.write_records(path, rows, columns)
        return path
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as handle:
        if fmt in ("csv", "tsv"):
            writer = csv.DictWriter(
                handle,
                fieldnames=list(rows[0]) if rows else list(columns or ["uri"]),
                delimiter="\t" if fmt == "tsv" else ",",
            )
            writer.writeheader()
            writer.writerows(rows)
        elif fmt == "json":
            json.dump(rows if whole is None else whole, handle, indent=2, ensure_ascii=False)
        else:
            handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return path
