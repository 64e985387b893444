"""What ``clipkit serve`` is asked to serve, and the checks that need no model."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from clipkit.config import Runtime
from clipkit.errors import UsageError
from clipkit.index.load import META_FILE
from clipkit.infra.fields import check_config
from clipkit.inputs.decode import DEFAULT_MAX_PIXELS
from clipkit.models.specs import ChoosesAModel
from clipkit.serve.limits import DEFAULT_DECODE_MB, DEFAULT_UPLOAD_MB, MAX_PROCESSES


@dataclass(frozen=True)
class ServeConfig(ChoosesAModel):
    """Indexes to serve (``DIR`` or ``NAME=DIR``), the model, where to listen, the limits."""

    indexes: tuple[str, ...]
    model: str | None = None  # default: the model each index records
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None  # every request needs "Authorization: Bearer TOKEN" when set
    device: str = "auto"
    runtime: Runtime | None = None  # None: $CLIPKIT_RUNTIME, else auto
    max_upload: int = DEFAULT_UPLOAD_MB * 2**20  # bytes of a request body
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_decode: int = DEFAULT_DECODE_MB * 2**20  # bytes a request's images take as decoded
    processes: int = 1  # server processes, each with its own indexes and models
    allowed_hosts: tuple[str, ...] = ()  # Host names answered besides the server's own

    def __post_init__(self) -> None:
        check_config(self)


def named_indexes(config: ServeConfig) -> dict[str, Path]:
    """Index name -> folder: ``NAME=DIR`` as given, else the folder's name.

    Raises:
        UsageError: no index, a name used twice, or a folder that holds no index.
    """
    if not config.indexes:
        raise UsageError("No index to serve.", "Pass --index DIR (or NAME=DIR), once per index.")
    named: dict[str, Path] = {}
    for given in config.indexes:
        name, _, folder = given.rpartition("=") if "=" in given else ("", "", given)
        path = Path(folder).expanduser()
        name = name or path.resolve().name
        if name in named:
            raise UsageError(f"Two indexes are named {name!r}.", "Name them: --index NAME=DIR.")
        if not (path / META_FILE).is_file():
            raise UsageError(
                f"{path} holds no index ({META_FILE} is missing).",
                f"Build one: clipkit index EMB_DIR -o {path}",
            )
        named[name] = path
    return named


def preflight(config: ServeConfig) -> list[str]:
    """Check what needs no model; return warnings to show (an open address without a token).

    Raises:
        UsageError: bad options or indexes.
    """
    if not 0 < config.port < 65536:
        raise UsageError(f"--port must lie in 1-65535, got {config.port}.", "e.g. --port 8000")
    if config.max_upload < 1:
        raise UsageError("--max-upload-mb must be positive.", "e.g. --max-upload-mb 20")
    if config.max_decode < 1:
        raise UsageError("--max-decode-mb must be positive.", "e.g. --max-decode-mb 512")
    if not 1 <= config.processes <= MAX_PROCESSES:
        raise UsageError(
            f"--processes must lie in 1-{MAX_PROCESSES}, got {config.processes}.",
            "One process per core at most: each holds its own copy of the indexes and models.",
        )
    if config.token is not None and len(config.token) < 8:
        raise UsageError("The token is shorter than 8 characters.", "Use a long random string.")
    config.given_spec  # noqa: B018 - parsed once, before any heavy import: a typo fails here
    named_indexes(config)
    if config.token is None and not is_loopback(config.host):
        return [
            f"Serving on {config.host} without a token: anyone who can reach this address can "
            "search the indexes and fetch their images. Pass --token (or set CLIPKIT_TOKEN), "
            "or bind 127.0.0.1."
        ]
    return []


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def to_environment(config: ServeConfig) -> str:
    """``config`` as text for an environment variable (worker processes read it back)."""
    return json.dumps(asdict(config))


def from_environment(text: str) -> ServeConfig:
    fields = json.loads(text)
    return ServeConfig(**{**fields, "indexes": tuple(fields["indexes"])})
