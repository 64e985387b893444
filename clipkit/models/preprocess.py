"""open_clip's evaluation transform in Pillow and NumPy, for the runtime without torch.

The geometry (resize, then centre crop or pad) runs on a decoded RGB image where the decode
workers run, and gives uint8 pixels; ``normalize`` turns a batch of them into the model's
float32 input. Both repeat torchvision's operations (``Resize``, ``CenterCrop``,
``ToTensor``, ``Normalize``) and open_clip's (``ResizeKeepRatio``, ``CenterCropOrPad``) in the
same float32 arithmetic, so the values are the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # Pillow is imported where an image is resized: a text search never needs it
    from PIL import Image

RESIZE_MODES = ("shortest", "longest", "squash")
INTERPOLATIONS = ("bicubic", "bilinear")


@dataclass(frozen=True)
class Preprocess:
    """A model's image preprocessing; ``size`` is (height, width)."""

    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    fill_color: int = 0

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Preprocess:
        """From open_clip's preprocess config (what an Encoder and an export record)."""
        size = config["size"]
        height, width = (size, size) if isinstance(size, int) else size
        interpolation = config.get("interpolation") or "bicubic"
        resize_mode = config.get("resize_mode") or "shortest"
        if interpolation not in INTERPOLATIONS:
            interpolation = "bicubic"  # open_clip evaluates 'random' as bicubic
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"unknown resize mode {resize_mode!r}")
        return cls(
            size=(int(height), int(width)),
            mean=_three(config["mean"]),
            std=_three(config["std"]),
            interpolation=interpolation,
            resize_mode=resize_mode,
            fill_color=int(config.get("fill_color") or 0),
        )

    def geometry(self, image: Image.Image) -> Image.Image:
        """Resize and centre-crop (or pad) an RGB image to ``size``."""
        height, width = self.size
        if self.resize_mode == "squash":
            return self._resize(image, height, width)
        if self.resize_mode == "longest":
            image = self._keep_ratio(image, longest=True)
            return _crop_or_pad(image, height, width, self.fill_color)
        if height == width:
            image = self._shortest_edge(image, height)
        else:
            image = self._keep_ratio(image, longest=False)
        return _crop_or_pad(image, height, width, 0)

    def pixels(self, image: Image.Image) -> np.ndarray:
        """The model's view of an RGB image as uint8, (3, H, W)."""
        return np.asarray(self.geometry(image).convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (N, 3, H, W) -> float32 (N, 3, H, W): ``(x / 255 - mean) / std``."""
        scaled = pixels.astype(np.float32) / np.float32(255)
        mean = np.asarray(self.mean, dtype=np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(1, 3, 1, 1)
        return (scaled - mean) / std

    def _resize(self, image: Image.Image, height: int, width: int) -> Image.Image:
        if image.size == (width, height):
            return image  # torchvision returns the image itself when the size already fits
        from PIL import Image

        return image.resize((width, height), Image.Resampling[self.interpolation.upper()])

    def _shortest_edge(self, image: Image.Image, edge: int) -> Image.Image:
        """torchvision's ``Resize(int)``: the shorter side becomes ``edge``; the longer one is
        scaled by the same factor and truncated."""
        width, height = image.size
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(edge * long / short)
        new_width, new_height = (edge, new_long) if width <= height else (new_long, edge)
        return self._resize(image, new_height, new_width)

    def _keep_ratio(self, image: Image.Image, *, longest: bool) -> Image.Image:
        """open_clip's ``ResizeKeepRatio``: fit the longest (or shortest) side to the target."""
        width, height = image.size
        ratio_h, ratio_w = height / self.size[0], width / self.size[1]
        ratio = max(ratio_h, ratio_w) if longest else min(ratio_h, ratio_w)
        return self._resize(image, round(height / ratio), round(width / ratio))


def _crop_or_pad(image: Image.Image, height: int, width: int, fill: int) -> Image.Image:
    """torchvision's ``center_crop`` (and open_clip's ``center_crop_or_pad``): pad to at least
    the size around the centre, then crop the centre."""
    image_width, image_height = image.size
    if width > image_width or height > image_height:
        left = (width - image_width) // 2 if width > image_width else 0
        top = (height - image_height) // 2 if height > image_height else 0
        padded_width = max(width, image_width)
        padded_height = max(height, image_height)
        from PIL import Image

        canvas = Image.new(image.mode, (padded_width, padded_height), (fill,) * len(image.mode))
        canvas.paste(image, (left, top))
        image, image_width, image_height = canvas, padded_width, padded_height
        if (image_width, image_height) == (width, height):
            return image
    top = int(round((image_height - height) / 2.0))
    left = int(round((image_width - width) / 2.0))
    return image.crop((left, top, left + width, top + height))


def _three(values: Any) -> tuple[float, float, float]:
    if isinstance(values, (int, float)):
        return (float(values),) * 3
    first, second, third = (float(value) for value in values)
    return first, second, third
