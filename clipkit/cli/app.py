"""The Typer app, and the one place where errors become ``Error:``/``Hint:`` and exit codes."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer

from clipkit import __version__
from clipkit.cli.console import print_error, stderr
from clipkit.cli.metavars import Group
from clipkit.cli.settings import Command, model_from_file
from clipkit.config import ENV_DEBUG
from clipkit.errors import (
    ClipkitError,
    ModelSpecError,
    StoppedError,
    UsageError,
    WeightsUnavailableError,
)

# Errors about the model a spec names: where the spec came from the settings file, say so.
MODEL_ERRORS = (ModelSpecError, WeightsUnavailableError)


class _Typer(typer.Typer):
    """Typer whose commands are :class:`Command`: help in plain words, no Python type names,
    and the settings file's defaults."""

    def command(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("cls", Command)
        return super().command(*args, **kwargs)


app = _Typer(
    name="clipkit",
    help="Embed, index, search, fine-tune, zero-shot classify and audit with CLIP models.",
    no_args_is_help=True,
    add_completion=False,
    # Rich tracebacks print local variables, which hold tensors and paths: never show them.
    pretty_exceptions_enable=False,
    # Click's own help layout wraps the help text and never cuts an option's name; Rich's
    # tables cut long names with an ellipsis at 80 columns (--init-tempera…).
    rich_markup_mode=None,
)
models_app = _Typer(
    cls=Group,
    help="List architectures and pretrained weights, or inspect one.",
    invoke_without_command=True,
)
app.add_typer(models_app, name="models")

F = TypeVar("F", bound=Callable[..., Any])


def handles_errors(command: F) -> F:
    """Map ClipkitError to ``Error:``/``Hint:`` and exit 1; anything else likewise, tersely.

    ``CLIPKIT_DEBUG=1`` re-raises instead, so the plain traceback (no locals) is shown.
    """

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.BadParameter):
            raise  # normal exits, and usage errors that Click reports with exit code 2
        except KeyboardInterrupt:
            stderr.print("Interrupted.")
            raise typer.Exit(130) from None
        except StoppedError as error:
            print_error(error.message, error.hint)
            raise typer.Exit(130) from None
        except ClipkitError as error:
            if _debug():
                raise
            hint = error.hint
            settings_file = model_from_file()
            if isinstance(error, MODEL_ERRORS) and settings_file is not None:
                hint = f"{hint} The model is the one {settings_file} names.".strip()
            print_error(error.message, hint)
            raise typer.Exit(2 if isinstance(error, UsageError) else 1) from None
        except Exception as error:  # a bug, or a failure we did not foresee: still no traceback
            if _debug():
                raise
            print_error(
                f"Unexpected {type(error).__name__}: {error}",
                f"Re-run with {ENV_DEBUG}=1 to see the traceback, and please report it.",
            )
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


_quick_exit = False


def exit_quickly_when_done() -> None:
    """Say that the running command leaves nothing to clean up (it wrote only to stdout and
    stderr, its files atomically), so the console script may end the process without the
    interpreter's teardown: ONNX Runtime's, FAISS's and Arrow's destructors and freeing every
    module took 70 ms of a 0.55 s search. Tests that invoke the app directly are unaffected."""
    global _quick_exit
    _quick_exit = True


def quick_exit_requested() -> bool:
    return _quick_exit


def _debug() -> bool:
    return os.environ.get(ENV_DEBUG, "").strip().lower() in ("1", "true", "yes")


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"clipkit {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Show version."),
    ] = False,
) -> None:
    """Embed, index, search, fine-tune, zero-shot classify and audit with CLIP models."""
