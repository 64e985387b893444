"""The torch-free encoder: an ONNX export run by ONNX Runtime, with the NumPy tokenizer and
preprocessing. The only module that imports onnxruntime.

It offers what the services use of the torch ``Encoder`` (``encode_images`` on uint8 pixels
from the decode workers, ``encode_texts`` on strings, ``prepare_image``, ``truncated``, the
model's identity and ``logit_scale``), returning NumPy arrays.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from clipkit.errors import DeviceError, InputError
from clipkit.infra.device import Resolved
from clipkit.models.exported import IMAGE_FILE, TEXT_FILE, ExportManifest, read_export
from clipkit.models.preprocess import Preprocess
from clipkit.models.tokenizer import ClipTokenizer

if TYPE_CHECKING:
    from PIL import Image

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"


class OnnxEncoder:
    """A model's ONNX export, ready to encode; ``device`` is ``cpu`` or ``cuda``.

    ``bulk``: many batches will run (embed). ONNX Runtime then pre-packs the weights of its
    matrix products, which costs time when a tower loads (0.14 s for ViT-B-32's text tower)
    and pays back over many batches; a search's one query does better without.
    """

    runtime = "onnx"

    def __init__(
        self, folder: Path, manifest: ExportManifest, device: str = "cpu", *, bulk: bool = False
    ) -> None:
        self.folder = folder
        self.manifest = manifest
        self.spec = manifest.spec
        self.arch = manifest.arch
        self.fingerprint = manifest.fingerprint
        self.embed_dim = manifest.embed_dim
        self.image_size = manifest.image_size
        self.logit_scale = manifest.logit_scale
        self.logit_bias = manifest.logit_bias
        self.device = Resolved(device, "ONNX Runtime's " + ("CUDA" if device != "cpu" else "CPU"))
        self.bulk = bulk
        self.preprocess = Preprocess.from_config(manifest.preprocess)
        recipe = manifest.tokenizer
        if recipe.get("kind") != "clip-bpe":
            raise InputError(
                f"{folder} uses a tokenizer of kind {recipe.get('kind')!r}, which this version "
                "of clipkit cannot run without torch.",
                "Use --runtime torch, or export the model again with this version.",
            )
        self.context_length = int(recipe["context_length"])
        self.tokenizer = ClipTokenizer(
            folder / recipe["vocab"], self.context_length, clean=recipe["clean"]
        )
        self._providers = _providers(device)
        self._sessions: dict[str, ort.InferenceSession] = {}

    def prepare_image(self, image: Image.Image) -> np.ndarray:
        """A decoded RGB image as the model's uint8 pixels, (3, H, W)."""
        return self.preprocess.pixels(image)

    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 pixels (B, 3, H, W) from ``prepare_image`` -> unit-norm float32 (B, D)."""
        inputs = self.preprocess.normalize(np.asarray(pixels))
        return self._run(IMAGE_FILE, "pixels", inputs)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts (B strings) -> unit-norm float32 embeddings (B, D)."""
        return self._run(TEXT_FILE, "tokens", self.tokenizer(list(texts)))

    def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        """Token ids (B, context_length), int64."""
        return self.tokenizer(list(texts))

    def truncated(self, texts: Sequence[str]) -> list[bool]:
        """Whether each text is longer than the context (start and end tokens included)."""
        return [len(self.tokenizer.encode(text)) + 2 > self.context_length for text in texts]

    def _run(self, file: str, name: str, inputs: np.ndarray) -> np.ndarray:
        if len(inputs) == 0:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        (out,) = self._session(file).run(None, {name: inputs})
        return np.asarray(out, dtype=np.float32)

    def _session(self, file: str) -> ort.InferenceSession:
        """Each tower is loaded when first used: a text search never loads the image tower."""
        if file not in self._sessions:
            path = self.folder / file
            try:
                self._sessions[file] = ort.InferenceSession(
                    str(path), _session_options(self.bulk), providers=self._providers
                )
            except Exception as error:  # onnxruntime raises its own types for a bad graph
                raise InputError(
                    f"{path} cannot be loaded as an ONNX model "
                    f"({str(error).splitlines()[0][:200]}).",
                    f"Export it again: clipkit export -m {self.spec} -o {self.folder}",
                ) from None
        return self._sessions[file]


def load_onnx(
    folder: Path, *, fingerprint: str | None = None, device: str = "cpu", bulk: bool = False
) -> OnnxEncoder:
    """The export in ``folder``, checked (see ``exported.read_export``); ``bulk`` as in
    :class:`OnnxEncoder`.

    Raises:
        InputError: no export, another model's, or a damaged one.
        DeviceError: ``cuda`` without onnxruntime-gpu.
    """
    return OnnxEncoder(folder, read_export(folder, fingerprint), device, bulk=bulk)


def run_tower(path: Path, input_name: str, inputs: np.ndarray) -> np.ndarray:
    """One tower's float32 output for one batch, on the CPU (to compare two exports)."""
    session = ort.InferenceSession(str(path), providers=[CPU])
    return np.asarray(session.run(None, {input_name: inputs})[0], dtype=np.float32)


def fuse_tower(source: Path, target: Path) -> None:
    """ONNX Runtime's transformer optimizer on one tower (``model_type="clip"``): LayerNorm and
    bias-GELU become single kernels (ViT-B-32's image tower: 22.6 images/s against 19.7 on 2
    cores). What it says (shape inference it cannot do on this graph: a log record and a bare
    ``print``) is not for users."""
    from onnxruntime.transformers import optimizer

    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            model = optimizer.optimize_model(
                str(source), model_type="clip", num_heads=0, hidden_size=0, opt_level=1
            )
        model.save_model_to_file(str(target), use_external_data_format=True)
    finally:
        logging.disable(logging.NOTSET)


def quantize_int8(source: Path, target: Path) -> None:
    """ONNX Runtime's dynamic int8 quantization of one tower: the weights of its matrix
    products become int8 (a scale per output channel: closer to fp32 than one per tensor, on
    clipkit-tiny), activations are quantized on the fly; weights beside the graph."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        source,
        target,
        weight_type=QuantType.QInt8,
        per_channel=True,
        use_external_data_format=True,
    )


def _session_options(bulk: bool) -> ort.SessionOptions:
    options = ort.SessionOptions()
    if not bulk:
        # Without this, ONNX Runtime's threads spin for a while after each run, on every core,
        # and slow down what the process does next (reading the hits' rows took 10x as long).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.disable_prepacking", "1")
    return options


def _providers(device: str) -> list[str]:
    if device == "cpu":
        return [CPU]
    if device.startswith("cuda"):
        if CUDA not in ort.get_available_providers():
            raise DeviceError(
                "--device cuda with the ONNX runtime needs onnxruntime-gpu.",
                "pip install onnxruntime-gpu, or use --runtime torch on the GPU.",
            )
        return [CUDA, CPU]
    raise DeviceError(f"The ONNX runtime runs on cpu or cuda, not {device!r}.", "Use --device cpu.")
