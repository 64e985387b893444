"""Error types: every failure a user can cause is a ClipkitError with a message and a hint.

The CLI maps these, in one place, to ``Error: ...`` / ``Hint: ...`` on stderr and exit code 1
(130 for ``StoppedError``, as for Ctrl-C).
"""

from __future__ import annotations


class ClipkitError(Exception):
    """A failure with a message for the user and a hint on what to do about it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


class ModelSpecError(ClipkitError):
    """A model spec string that does not name a loadable model."""


class WeightsUnavailableError(ClipkitError):
    """Pretrained weights that are neither cached nor downloadable."""


class UnsafeCheckpointError(ClipkitError):
    """A checkpoint that would execute code when loaded, or is not a checkpoint at all."""


class DeviceError(ClipkitError):
    """A requested device or precision that this machine cannot provide."""


class InputError(ClipkitError):
    """User input (paths, options, data) that cannot be used."""


class StoppedError(ClipkitError):
    """Work the user stopped (Ctrl-C) after saving what it had; the hint says how to go on."""


class DivergedError(ClipkitError):
    """Training stopped because its loss stopped being a finite number."""


class SkippedInputsError(ClipkitError):
    """``strict`` work that skipped inputs: raised once the work is done and saved.

    ``result`` is what the service would have returned, so a caller can still report it.
    """

    def __init__(self, skipped: int, listed_in: str | None, result: object) -> None:
        where = f" and in {listed_in}" if listed_in else ""
        super().__init__(
            f"{skipped} input{'s were' if skipped != 1 else ' was'} skipped, and strict mode "
            "turns any skip into a failure.",
            f"The skipped inputs are listed above{where}; fix or remove them, or run without "
            "--strict.",
        )
        self.skipped = skipped
        self.result = result


class UsageError(InputError):
    """Options that contradict each other or lie outside their range: the same mistake as a
    command line that does not parse, so the CLI exits 2 for it, as for those."""
