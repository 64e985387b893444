"""Pretrained weights on the network: cache lookups, and downloads that fail fast offline.

Offline, a user must get an error within seconds that names the ways out, never a hang: the
cache is checked first, then the host is probed (DNS + TCP, 5 s), then the download itself
runs under a hard time limit.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from clipkit.config import PROBE_TIMEOUT_S, WEIGHTS_TIMEOUT_S
from clipkit.errors import WeightsUnavailableError

# huggingface_hub reads its timeouts once, when imported: set them before anything imports it.
os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")

OFFLINE_HINT = (
    "Without network, use a local checkpoint (-m PATH, or -m ARCH:PATH for open_clip files), "
    "or a Hugging Face cache that already holds the weights with HF_HUB_OFFLINE=1 (HF_HOME "
    "points at it), or a built-in architecture such as clipkit-tiny:random trained offline "
    "(the quickstart does this)."
)


def cached_file(pretrained_cfg: dict[str, Any]) -> str | None:
    """The local file holding an open_clip pretrained tag's weights, if already downloaded."""
    if pretrained_cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        # open_clip's convention: "org/repo/" means the default file; prefer .safetensors twins.
        repo_id, filename = os.path.split(pretrained_cfg["hf_hub"])
        filename = filename or "open_clip_pytorch_model.bin"
        candidates = [filename]
        if filename == "open_clip_pytorch_model.bin":
            candidates.insert(0, "open_clip_model.safetensors")
        elif filename.endswith((".bin", ".pth")):
            candidates.insert(0, filename[:-4] + ".safetensors")
        for candidate in candidates:
            found = try_to_load_from_cache(repo_id.rstrip("/"), candidate)
            if isinstance(found, str):
                return found
    if pretrained_cfg.get("url"):
        local = Path("~/.cache/clip").expanduser() / Path(pretrained_cfg["url"]).name
        if local.is_file():
            return str(local)
    return None


def require_online(spec_text: str) -> None:
    """Refuse at once when HF_HUB_OFFLINE says not to download."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise WeightsUnavailableError(
            f"Weights for {spec_text!r} are not in the local cache and HF_HUB_OFFLINE is set.",
            OFFLINE_HINT,
        )


def hub_host() -> str:
    return urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or ""


def probe(host: str | None, spec_text: str) -> None:
    """Fail at once when the download host cannot be reached, instead of after many retries."""
    try:
        socket.create_connection((host or "", 443), timeout=PROBE_TIMEOUT_S).close()
    except OSError as error:
        raise WeightsUnavailableError(
            f"Weights for {spec_text!r} are not in the local cache, and {host} cannot be "
            f"reached to download them ({error.strerror or error}).",
            OFFLINE_HINT,
        ) from None


def with_timeout(load: Callable[[], Any], spec_text: str) -> Any:
    """Run a download in a daemon thread so that a dead network cannot hang the command."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = load()
        except BaseException as error:  # reported to the caller's thread below
            outcome["error"] = error

    worker = threading.Thread(target=target, daemon=True, name="clipkit-download")
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)  # its per-retry warnings would flood the terminal
    try:
        worker.start()
        worker.join(WEIGHTS_TIMEOUT_S)
    finally:
        hub_logger.setLevel(level)
    if worker.is_alive():
        reason = f"no answer within {WEIGHTS_TIMEOUT_S:.0f} s"
    elif "error" in outcome:
        reason = str(outcome["error"]).splitlines()[0][:300]
    else:
        return outcome["value"]
    raise WeightsUnavailableError(
        f"Could not get the weights for {spec_text!r}: {reason}.", OFFLINE_HINT
    )
