"""Exporting a model's two towers to ONNX, with what the torch-free runtime needs beside them.

Uses torch's ``torch.export``-based exporter (the maintained one since PyTorch 2.9; the
TorchScript one is deprecated). Each tower's graph ends with the L2 normalisation, so both
runtimes return the same unit vectors. The folder is written beside its destination and
renamed into place, so an interrupted export leaves no half model where a reader looks.
"""

from __future__ import annotations

import contextlib
import glob
import io
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from clipkit import __version__
from clipkit.config import EXPORT_PRECISIONS, ExportPrecision
from clipkit.errors import InputError, UsageError
from clipkit.infra.atomic import check_output, make_folder
from clipkit.infra.locks import process_alive
from clipkit.models.exported import (
    IMAGE_FILE,
    MANIFEST_FILE,
    TEXT_FILE,
    ExportManifest,
    cached_export,
    file_record,
    remember_spec,
    replace_towers,
)
from clipkit.models.openclip import Encoder

OPSET = 18


class _ImageTower(torch.nn.Module):
    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model  # an open_clip model (untyped)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.encode_image(pixels).float(), dim=-1)


class _TextTower(torch.nn.Module):
    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model  # an open_clip model (untyped)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)


def export_onnx(
    encoder: Encoder,
    out_dir: Path,
    precision: ExportPrecision = "fp32",
    probe: tuple[Sequence[Any], Sequence[str]] | None = None,
) -> ExportManifest:
    """Write ``encoder``'s export to ``out_dir`` (replacing an export already there).

    ``precision`` ``int8`` quantizes the towers, where they then answer as fp32 does on
    ``probe`` (images and their captions; see :mod:`clipkit.models.onnx_int8`).

    Raises:
        InputError: a model whose tokenizer has no torch-free version, int8 that changes the
            model's answers, or an output folder that cannot be written.
    """
    if precision not in EXPORT_PRECISIONS:
        raise UsageError(
            f"Unknown ONNX precision {precision!r}.",
            "Use fp32 or int8 (fp16 is not offered yet: its agreement is unmeasured).",
        )
    if precision == "int8" and probe is None:
        raise UsageError(
            "An int8 export needs a probe of image-caption pairs to measure its agreement.",
            "Pass probe=(images, captions); clipkit export generates captioned shapes.",
        )
    if probe is not None and precision == "int8":
        from clipkit.models.onnx_int8 import check_probe

        check_probe(probe)  # in a blink, not after the export's 20 s
    recipe = encoder.torch_free_tokenizer()
    if recipe is None:
        raise InputError(
            f"{encoder.spec} uses a tokenizer ({type(encoder.tokenizer).__name__}) that clipkit "
            "cannot run without torch, so it has no ONNX export.",
            "Use --runtime torch with this model.",
        )
    out_dir = Path(out_dir).expanduser()
    make_folder(out_dir.parent)
    _check_replaceable(out_dir)
    staging = None
    try:
        _sweep_abandoned(out_dir)
        staging = Path(
            tempfile.mkdtemp(prefix=f".{out_dir.name}.export-{os.getpid()}-", dir=out_dir.parent)
        )
        _write(encoder, recipe, staging)
        agreement = None
        if precision == "int8":
            assert probe is not None
            agreement = _quantize(encoder, recipe, staging, probe)
        manifest = _manifest(encoder, recipe, staging, precision, agreement)
        (staging / MANIFEST_FILE).write_text(manifest.to_json(), encoding="utf-8")
        _publish(staging, out_dir)
        if out_dir.resolve() == cached_export(encoder.fingerprint).resolve():
            remember_spec(encoder.spec, encoder.fingerprint)  # embed -m SPEC finds it
    except OSError as error:  # a full disk, a read-only cache: the machine, not a bug
        raise InputError(
            f"Cannot write the export to {out_dir}: {error.strerror or error}.",
            "Free some space or choose a writable folder (-o, or CLIPKIT_ONNX_CACHE).",
        ) from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _write(encoder: Encoder, recipe: dict, folder: Path) -> None:
    model = encoder.model.float().eval()
    height, width = encoder.image_size
    pixels = torch.zeros(2, 3, height, width)
    tokens = torch.zeros(2, recipe["context_length"], dtype=torch.long)
    batch = torch.export.Dim("batch")
    with torch.no_grad(), _quiet():
        for tower, example, name, path in (
            (_ImageTower(model), pixels, "pixels", folder / IMAGE_FILE),
            (_TextTower(model), tokens, "tokens", folder / TEXT_FILE),
        ):
            torch.onnx.export(
                tower,
                (example,),
                str(path),
                input_names=[name],
                output_names=["embeddings"],
                dynamic_shapes=({0: batch},),
                opset_version=OPSET,
                dynamo=True,
                # Weights in a file beside the graph: ONNX Runtime maps it instead of parsing
                # and copying them (ViT-B-32's text tower loads in 0.04 s, not 0.6 s, and
                # with half the memory), and a model may pass protobuf's 2 GB limit.
                external_data=True,
            )
    rng = np.random.default_rng(0)
    _fuse(folder, IMAGE_FILE, "pixels", rng.standard_normal((4, 3, height, width), np.float32))
    _fuse(folder, TEXT_FILE, "tokens", rng.integers(1, 49_000, (4, recipe["context_length"])))
    shutil.copyfile(recipe["vocab_path"], folder / Path(recipe["vocab_path"]).name)


# A fused tower is kept only where its embeddings are the plain graph's to this cosine per row.
FUSED_AGREEMENT = 0.99999


def _fuse(folder: Path, name: str, input_name: str, example: np.ndarray) -> bool:
    """Replace tower ``name`` by its fused graph (see ``onnx_encoder.fuse_tower``) where that
    gives the same embeddings on ``example``; returns whether it did."""
    from clipkit.models.onnx_encoder import fuse_tower, run_tower

    fused = folder / "fused"
    fused.mkdir()
    try:
        fuse_tower(folder / name, fused / name)
        before = run_tower(folder / name, input_name, example)
        after = run_tower(fused / name, input_name, example)
        same = float((before * after).sum(axis=1).min()) >= FUSED_AGREEMENT
    except Exception:  # the optimizer does not know every graph: the plain one serves as well
        same = False
    if same:
        replace_towers(folder, fused, [name])
    else:
        shutil.rmtree(fused)
    return same


def _quantize(
    encoder: Encoder, recipe: dict, folder: Path, probe: tuple[Sequence[Any], Sequence[str]]
) -> dict[str, float]:
    from clipkit.models.onnx_int8 import quantize_export
    from clipkit.models.preprocess import Preprocess
    from clipkit.models.tokenizer import ClipTokenizer

    tokenizer = ClipTokenizer(
        Path(recipe["vocab_path"]), recipe["context_length"], clean=recipe["clean"]
    )
    preprocess = Preprocess.from_config(encoder.preprocess_config)
    return quantize_export(folder, preprocess, tokenizer, probe)


def _manifest(
    encoder: Encoder,
    recipe: dict,
    folder: Path,
    precision: ExportPrecision = "fp32",
    agreement: dict[str, float] | None = None,
) -> ExportManifest:
    bias = getattr(encoder.model, "logit_bias", None)
    vocab = Path(recipe["vocab_path"]).name
    names = sorted(path.name for path in folder.iterdir())  # graphs, their weights, the vocab
    return ExportManifest(
        spec=encoder.spec,
        arch=encoder.arch,
        fingerprint=encoder.fingerprint,
        embed_dim=int(encoder.model_config.get("embed_dim", 0)),
        image_size=(int(encoder.image_size[0]), int(encoder.image_size[1])),
        preprocess=dict(encoder.preprocess_config),
        tokenizer={
            "kind": recipe["kind"],
            "vocab": vocab,
            "clean": recipe["clean"],
            "context_length": recipe["context_length"],
        },
        logit_scale=encoder.logit_scale,
        logit_bias=float(bias.detach()) if bias is not None else None,
        precision=precision,
        agreement=agreement,
        files={name: file_record(folder / name) for name in names},
        clipkit_version=__version__,
    )


def _sweep_abandoned(out_dir: Path) -> None:
    """Remove what exports to ``out_dir`` killed mid-way left beside it (their staging folder,
    or the previous export they were replacing): each is named with its process id, and a
    folder whose process is gone is nobody's. Another export running now keeps its own."""
    for path in out_dir.parent.glob(f".{glob.escape(out_dir.name)}.*-*"):
        kind, _, rest = path.name[len(out_dir.name) + 2 :].partition("-")
        pid = rest.partition("-")[0]
        if kind in ("export", "replaced") and pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _check_replaceable(out_dir: Path) -> None:
    """Before any work: only an export (or an empty folder) is ever replaced."""
    check_output(out_dir, folder=True)
    if out_dir.is_dir() and not (out_dir / MANIFEST_FILE).is_file() and any(out_dir.iterdir()):
        raise InputError(
            f"{out_dir} exists and is not an ONNX export: clipkit will not replace it.",
            "Choose another -o folder, or empty this one.",
        )


def _publish(staging: Path, out_dir: Path) -> None:
    """Rename the finished folder into place; an earlier export there is replaced."""
    _check_replaceable(out_dir)  # again: the folder may have changed during the export
    old = None
    if out_dir.exists():
        unique = staging.name.rsplit("-", 1)[1]
        old = out_dir.with_name(f".{out_dir.name}.replaced-{os.getpid()}-{unique}")
        out_dir.rename(old)
    staging.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _quiet():
    """The exporter prints its progress and warns about things that do not concern users."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield
