"""Defaults and environment-variable names shared by every layer (no heavy imports here)."""

from __future__ import annotations

ENV_MODEL = "CLIPKIT_MODEL"
ENV_DEBUG = "CLIPKIT_DEBUG"
ENV_ONNX_CACHE = "CLIPKIT_ONNX_CACHE"  # where ONNX exports are cached (by model fingerprint)
ENV_RUNTIME = "CLIPKIT_RUNTIME"  # auto, torch or onnx: what encodes
ENV_CONFIG = "CLIPKIT_CONFIG"  # the settings file (default ~/.config/clipkit/config.toml)
# where `clipkit search --in DIR` keeps each folder's embeddings and index
ENV_FOLDER_CACHE = "CLIPKIT_FOLDER_CACHE"

# A good general-purpose pretrained model; needs its weights cached or the network.
DEFAULT_MODEL_SPEC = "ViT-B-32:laion2b_s34b_b79k"

# Seed used for ``ARCH:random`` so that random initialisation is reproducible across runs.
RANDOM_INIT_SEED = 0

# Offline, a weights download must fail fast: a reachability probe first, then a hard cap on
# the whole download attempt, both well inside the 30 s a user will wait for an error.
PROBE_TIMEOUT_S = 5.0
WEIGHTS_TIMEOUT_S = 20.0

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
# Input tables that sources, pairs and the store read (CSV, TSV, JSON lines, Parquet).
TABLE_SUFFIXES = frozenset({".csv", ".tsv", ".jsonl", ".parquet"})
