"""Defaults and environment-variable names shared by every layer (no heavy imports here)."""

from __future__ import annotations

from typing import Literal, get_args

ENV_MODEL = "CLIPKIT_MODEL"
ENV_DEBUG = "CLIPKIT_DEBUG"
ENV_ONNX_CACHE = "CLIPKIT_ONNX_CACHE"  # where ONNX exports are cached (by model fingerprint)
ENV_RUNTIME = "CLIPKIT_RUNTIME"  # auto, torch or onnx: what encodes
ENV_CONFIG = "CLIPKIT_CONFIG"  # the settings file (default ~/.config/clipkit/config.toml)
# where `clipkit search --in DIR` keeps each folder's embeddings and index
ENV_FOLDER_CACHE = "CLIPKIT_FOLDER_CACHE"
ENV_RAY_ADDRESS = "RAY_ADDRESS"  # Ray's own: the head of the cluster --engine ray runs on

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
# Files of rows that commands write (predictions, audit reports, duplicates): format by suffix.
REPORT_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet")

# --device: auto, cpu, mps, cuda or cuda:N (whether it is present is told when it is used).
DEVICE_FORMS = r"auto|cpu|mps|cuda(:\d+)?"

# The names a user types, each defined once: CLI choices, the settings file and the config
# dataclasses take them from here (typer shows a Literal's values as the option's choices).
Runtime = Literal["auto", "torch", "onnx"]  # what encodes
RUNTIMES: tuple[Runtime, ...] = get_args(Runtime)
Engine = Literal["local", "ray"]  # embed, index: this machine's processes, or a Ray cluster
ENGINES: tuple[Engine, ...] = get_args(Engine)

# One --precision vocabulary; each command takes the part that applies to what it makes.
ComputePrecision = Literal["auto", "fp32", "fp16", "bf16"]  # train: autocast on CUDA
COMPUTE_PRECISIONS: tuple[ComputePrecision, ...] = get_args(ComputePrecision)
StoredPrecision = Literal["fp32", "fp16"]  # embed: the vectors as written to Parquet
STORED_PRECISIONS: tuple[StoredPrecision, ...] = get_args(StoredPrecision)
ExportPrecision = Literal["fp32", "int8"]  # export: the ONNX towers' weights
EXPORT_PRECISIONS: tuple[ExportPrecision, ...] = get_args(ExportPrecision)

Loss = Literal["clip", "siglip"]  # train: softmax InfoNCE both ways, or a sigmoid per pair
LOSSES: tuple[Loss, ...] = get_args(Loss)
ImageSSL = Literal["simclr", "simsiam", "byol", "swav"]  # train: image self-supervision
IMAGE_SSL_METHODS: tuple[ImageSSL, ...] = get_args(ImageSSL)

# Recall@k as training's evaluation and audit report it.
RECALL_KS = (1, 5, 10)
