"""The user's settings file, and saying where each setting of a command came from.

``$CLIPKIT_CONFIG``, else ``~/.config/clipkit/config.toml`` (``$XDG_CONFIG_HOME/clipkit/...``
where that is set), may hold the defaults of every command::

    model = "ViT-B-32:laion2b_s34b_b79k"
    runtime = "onnx"
    device = "cpu"

The command line wins, then the environment (``$CLIPKIT_MODEL``, ``$CLIPKIT_RUNTIME``), then
the file, then the built-in default: the file fills click's ``default_map``, which ranks just so.
A command whose model an artifact records (``search``, ``zeroshot``, ``audit``) keeps the
recorded model; the file's model replaces only the built-in default, where nothing records one.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from clipkit.cli import metavars
from clipkit.cli.console import print_error, stderr
from clipkit.config import (
    DEFAULT_MODEL_SPEC,
    DEVICE_FORMS,
    ENGINES,
    ENV_CONFIG,
    ENV_MODEL,
    RUNTIMES,
)
from clipkit.errors import ModelSpecError, UsageError
from clipkit.models.specs import SpecKind, parse_spec

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same module, as a package
    import tomli as tomllib

KEYS = ("model", "runtime", "device", "engine")


@dataclass(frozen=True)
class Setting:
    """A value and where it came from: "" for the command line or the built-in default, else
    ``$VARIABLE`` or the settings file's path."""

    value: str
    origin: str = ""

    def described(self, name: str) -> str:
        return f"{name} {self.value}" + (f" (from {self.origin})" if self.origin else "")


def settings_path() -> tuple[Path, bool]:
    """The settings file, and whether the user named it (``$CLIPKIT_CONFIG``): a named file
    must exist; the default one may not."""
    named = os.environ.get(ENV_CONFIG)
    if named:
        return Path(named).expanduser(), True
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "clipkit" / "config.toml", False


def read_settings() -> dict[str, Setting]:
    """The file's settings (none when the default file does not exist).

    Raises:
        UsageError: a named file that is missing, a file that is no TOML, an unknown key, or a
            value of the wrong type.
    """
    path, named = settings_path()
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM (Windows editors) is no TOML
    except FileNotFoundError:
        if named:
            raise UsageError(
                f"The settings file {path} (${ENV_CONFIG}) does not exist.",
                f"Create it, or unset {ENV_CONFIG}.",
            ) from None
        return {}
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or "it is not UTF-8 text"
        raise UsageError(f"Cannot read the settings file {path}: {reason}.", _HINT) from None
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise UsageError(f"The settings file {path} is not valid TOML: {error}.", _HINT) from None
    settings = {}
    for key, value in table.items():
        if key not in KEYS:
            raise UsageError(
                f"Unknown setting {key!r} in {path}.", f"Settings are {', '.join(KEYS)}."
            )
        if not isinstance(value, str) or not value.strip():
            raise UsageError(f"Setting {key!r} in {path} must be a non-empty string.", _HINT)
        if key == "runtime" and value not in RUNTIMES:
            raise UsageError(
                f"Setting runtime = {value!r} in {path} is not one of {', '.join(RUNTIMES)}.",
                _HINT,
            )
        if key == "engine" and value not in ENGINES:
            raise UsageError(
                f"Setting engine = {value!r} in {path} is not one of {', '.join(ENGINES)}.",
                _HINT,
            )
        if key == "device" and not re.fullmatch(DEVICE_FORMS, value.strip().lower()):
            raise UsageError(
                f"Setting device = {value!r} in {path} is no device.",
                "Use auto, cpu, cuda, cuda:N or mps.",
            )
        if key == "model":
            value = _model_from(value.strip(), path)
        settings[key] = Setting(value.strip(), str(path))
    return settings


_HINT = 'Write lines such as model = "ViT-B-32:laion2b_s34b_b79k", runtime = "onnx".'


def _model_from(value: str, path: Path) -> str:
    """The file's model spec, a checkpoint's relative path read from the file's folder (the
    file means the same model from wherever a command runs).

    Raises:
        UsageError: a checkpoint path that does not exist, naming the file.
    """
    try:
        spec = parse_spec(value)
    except ModelSpecError as error:
        message = f"Setting model = {value!r} in {path}: {error.message}"
        raise UsageError(message, error.hint) from None
    if spec.kind is not SpecKind.CHECKPOINT or spec.path is None:
        return value
    checkpoint = spec.path if spec.path.is_absolute() else path.parent / spec.path
    if not checkpoint.exists():
        raise UsageError(
            f"Setting model = {value!r} in {path}: {checkpoint} does not exist.",
            "Fix the path (relative paths are read from the settings file's folder), or pass -m.",
        )
    return f"{spec.arch}:{checkpoint}" if spec.arch else str(checkpoint)


def default_map(params: list[Any]) -> dict[str, str]:
    """click's ``default_map`` for a command with these parameters: the file's values for the
    options it has, except a model option whose default is "what the artifact records"."""
    settings = read_settings()
    names = {param.name: param for param in params}
    chosen = {}
    for key, setting in settings.items():
        param = names.get(key)
        if param is None or (key == "model" and param.default is None):
            continue
        chosen[key] = setting.value
    return chosen


def fallback_model(given: str | None) -> Setting:
    """The model for inputs that no artifact records: the one given (option or
    ``$CLIPKIT_MODEL``), else the settings file's, else the built-in default."""
    if given is not None:
        return Setting(given, _origins.get("model", ""))
    setting = read_settings().get("model")
    if setting is None:
        return Setting(DEFAULT_MODEL_SPEC)
    _origins["model"] = setting.origin
    return setting


def model_from_file() -> str | None:
    """The settings file that named the running command's model, if one did."""
    origin = _origins.get("model", "")
    return origin if origin and not origin.startswith("$") else None


class Command(metavars.Command):
    """A command whose model, runtime and device options default to the settings file's, and
    which says on stderr which of them came from the environment or the file."""

    def make_context(
        self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any
    ) -> Any:
        problem = None
        if "default_map" not in extra:
            try:
                extra["default_map"] = default_map(self.params)
            except UsageError as error:  # reported when the command runs: --help still works
                extra["default_map"], problem = {}, error
        context = super().make_context(info_name, args, parent, **extra)
        if problem is not None:
            context.meta[_PROBLEM] = problem
        return context

    def invoke(self, ctx: Any) -> Any:
        problem = ctx.meta.get(_PROBLEM)
        if problem is not None:
            print_error(problem.message, problem.hint)
            raise typer.Exit(2)
        _origins.clear()
        _origins.update({name: _origin(ctx, name) for name in KEYS if name in ctx.params})
        chosen = [
            Setting(_shown(ctx.params[name]), origin).described(name)
            for name, origin in _origins.items()
            if origin and ctx.params[name] is not None
        ]
        if chosen:
            stderr.print("Using " + ", ".join(chosen) + ".", markup=False, soft_wrap=True)
        return super().invoke(ctx)


_PROBLEM = "clipkit.settings_problem"
# Where the running command's settings came from (one command runs per process; the CLI
# tests' runner sets it afresh for each invocation).
_origins: dict[str, str] = {}


def _origin(ctx: Any, name: str) -> str:
    """``$VARIABLE`` or the settings file for a value from there; "" otherwise."""
    # By name: Typer carries its own copy of click, whose enum is not importable publicly.
    source = getattr(ctx.get_parameter_source(name), "name", "")
    if source == "ENVIRONMENT":
        param = next(p for p in ctx.command.params if p.name == name)
        return f"${param.envvar if isinstance(param.envvar, str) else ENV_MODEL}"
    if source == "DEFAULT_MAP":
        return str(settings_path()[0])
    return ""


def _shown(value: Any) -> str:
    return str(getattr(value, "value", value))
