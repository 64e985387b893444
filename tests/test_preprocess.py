"""The torch-free preprocessing equals open_clip's evaluation transform (max abs difference
1e-6) on images of several modes and shapes, for every resize mode and interpolation."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from clipkit.inputs.decode import decode_image
from clipkit.models.preprocess import Preprocess

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _noise(width: int, height: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def sample_images() -> dict[str, Image.Image]:
    """Decoded as clipkit decodes them (to RGB): palette, RGBA, CMYK, 16-bit, grayscale, tall,
    wide, smaller than the model's input, and exactly its size."""
    rgb = Image.fromarray(_noise(120, 80, 0))
    raw = {
        "palette": (rgb.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
        "rgba": (Image.fromarray(_noise(90, 70, 1)).convert("RGBA"), "PNG"),
        "cmyk": (Image.fromarray(_noise(64, 96, 2)).convert("CMYK"), "JPEG"),
        "16-bit": (Image.fromarray(_noise(50, 40, 3)[..., 0].astype(np.uint16) * 257), "PNG"),
        "grayscale": (Image.fromarray(_noise(77, 101, 4)[..., 0]), "PNG"),
        "tall": (Image.fromarray(_noise(30, 200, 5)), "PNG"),
        "wide": (Image.fromarray(_noise(211, 33, 6)), "PNG"),
        "small": (Image.fromarray(_noise(20, 14, 7)), "PNG"),
        "exact": (Image.fromarray(_noise(64, 64, 8)), "PNG"),
    }
    return {name: decode_image(_encoded(image, fmt)) for name, (image, fmt) in raw.items()}


CONFIGS = [
    {"size": 64, "resize_mode": "shortest", "interpolation": "bicubic"},
    {"size": 64, "resize_mode": "shortest", "interpolation": "bilinear"},
    {"size": [48, 64], "resize_mode": "shortest", "interpolation": "bicubic"},
    {"size": 64, "resize_mode": "longest", "interpolation": "bicubic", "fill_color": 0},
    {"size": [40, 56], "resize_mode": "longest", "interpolation": "bicubic", "fill_color": 127},
    {"size": 64, "resize_mode": "squash", "interpolation": "bicubic"},
    {"size": [32, 72], "resize_mode": "squash", "interpolation": "bilinear"},
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c['resize_mode']}-{c['size']}")
def test_pixels_equal_open_clip_s_transform(config):
    from open_clip.transform import image_transform

    size = config["size"] if isinstance(config["size"], int) else tuple(config["size"])
    theirs = image_transform(
        size,
        is_train=False,
        mean=OPENAI_MEAN,
        std=OPENAI_STD,
        resize_mode=config["resize_mode"],
        interpolation=config["interpolation"],
        fill_color=config.get("fill_color", 0),
    )
    ours = Preprocess.from_config({**config, "mean": OPENAI_MEAN, "std": OPENAI_STD})
    for name, image in sample_images().items():
        expected = theirs(image).numpy()
        got = ours.normalize(ours.pixels(image)[None])[0]
        assert got.dtype == np.float32 and got.shape == expected.shape, name
        assert np.abs(got - expected).max() <= 1e-6, name


def test_the_models_own_preprocessing_is_matched(tiny_encoder):
    """The config an Encoder records (and an export carries) gives its own transform's values."""
    ours = Preprocess.from_config(tiny_encoder.preprocess_config)
    for name, image in sample_images().items():
        expected = tiny_encoder.preprocess(image).numpy()
        got = ours.normalize(ours.pixels(image)[None])[0]
        assert np.abs(got - expected).max() <= 1e-6, name


def test_an_unknown_resize_mode_is_refused():
    with pytest.raises(ValueError, match="resize mode"):
        Preprocess.from_config({"size": 64, "mean": 0.5, "std": 0.5, "resize_mode": "stretch"})


@pytest.mark.e2e
def test_preprocessing_imports_no_torch():
    code = (
        "import sys\nfrom PIL import Image\nfrom clipkit.models.preprocess import Preprocess\n"
        "p = Preprocess.from_config({'size': 32, 'mean': 0.5, 'std': 0.5})\n"
        "p.normalize(p.pixels(Image.new('RGB', (50, 40)))[None])\n"
        "print(' '.join(m for m in ('torch', 'torchvision', 'open_clip') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""
