"""Progress reports: one shape for every service, drawn as bars by the CLI (services never
print)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ProgressReport:
    """``done`` of ``total`` in ``stage``, with the latest figures (``loss``, ...) where any.

    A report with a ``note`` carries something the user should read before the work goes on
    (a run too short to train well): the CLI prints it above its bars.
    """

    stage: str
    done: int
    total: int
    figures: Mapping[str, float] = field(default_factory=dict)
    note: str = ""


ProgressCallback = Callable[[ProgressReport], None]


def no_progress(report: ProgressReport) -> None:
    """The callback for a caller that does not watch progress."""
