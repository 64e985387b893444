"""Model input in two steps: uint8 pixels from the decode workers, normalised where the model runs.

A CLIP evaluation transform ends with ``ToTensor`` and ``Normalize``. Run per image in a decode
worker they cost about a third of its time (ViT-B-32, 320 x 240 JPEGs: 1.2 of 3.6 ms per image,
measured here), and they turn each image into float32, four times the bytes of the uint8
pixels, all of which then go through shared memory and, on CUDA, over PCIe. So the workers stop
after the resize and crop, and the same arithmetic runs once per batch on the model's device.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from torchvision.transforms import (
    ColorJitter,
    Compose,
    InterpolationMode,
    Normalize,
    RandomApply,
    RandomGrayscale,
    RandomHorizontalFlip,
    RandomResizedCrop,
    ToTensor,
)
from torchvision.transforms.functional import pil_to_tensor


@dataclass(frozen=True)
class SplitTransform:
    """An image transform split into a per-image geometric part and a batched normalisation.

    ``normalize(stack([pixels(im) for im in images]))`` equals ``stack([full(im) for im in
    images])`` exactly: the same float32 operations in the same order.
    """

    full: Callable[[Image.Image], torch.Tensor]
    geometry: Callable[[Image.Image], Image.Image] | None  # None: the transform did not split
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def pixels(self, image: Image.Image) -> torch.Tensor:
        """PIL image -> uint8 pixels (3, H, W) after resize and crop.

        Where the transform could not be split, the fully transformed float tensor instead.
        """
        if self.geometry is None:
            return self.full(image)
        return pil_to_tensor(self.geometry(image))

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 pixels (B, 3, H, W) -> float32 model input (B, 3, H, W), on their device."""
        mean, std = _channels(self.mean, pixels.device), _channels(self.std, pixels.device)
        # As ToTensor then Normalize do it, so that the values are identical.
        return pixels.float().div_(255).sub_(mean).div_(std)


def split_transform(transform: Callable[[Image.Image], torch.Tensor]) -> SplitTransform:
    """Split a ``Compose([..., ToTensor(), Normalize(mean, std)])``; anything else stays whole.

    The geometric part must leave an RGB image (open_clip's ends with a convert to RGB); one
    that would not is left whole too, since ``pil_to_tensor`` of another mode is not uint8 RGB.
    """
    steps: Sequence = getattr(transform, "transforms", ())
    if (
        len(steps) < 2
        or not isinstance(steps[-1], Normalize)
        or not isinstance(steps[-2], ToTensor)
        or not any(_converts_to_rgb(step) for step in steps[:-2])
    ):
        return SplitTransform(full=transform, geometry=None)
    normalize = steps[-1]
    return SplitTransform(
        full=transform,
        geometry=Compose(list(steps[:-2])),
        mean=tuple(float(value) for value in normalize.mean),
        std=tuple(float(value) for value in normalize.std),
    )


def _converts_to_rgb(step: object) -> bool:
    # open_clip's MaybeConvertMode (not exported by name): PIL convert("RGB").
    return type(step).__name__ == "MaybeConvertMode" and getattr(step, "mode", None) == "RGB"


@functools.lru_cache(maxsize=16)
def _channels(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    # Cached per device: a fresh host-to-GPU copy per batch would wait for the GPU each time.
    return torch.tensor(values, dtype=torch.float32, device=device).view(1, -1, 1, 1)


def simclr_views(size: tuple[int, int]) -> Callable[[Image.Image], torch.Tensor]:
    """SimCLR's augmentation (Chen et al. 2020), as SLIP uses it: a random resized crop of 8 to
    100 % of the image, a horizontal flip, colour jitter (0.4, 0.4, 0.4, 0.1) with
    probability 0.8 and grayscale with 0.2; RGB image -> uint8 pixels (3, H, W)."""
    return Compose(
        [
            RandomResizedCrop(size, scale=(0.08, 1.0), interpolation=InterpolationMode.BICUBIC),
            RandomHorizontalFlip(),
            RandomApply([ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            RandomGrayscale(p=0.2),
            pil_to_tensor,
        ]
    )


@dataclass(frozen=True)
class WithViews:
    """A training image and two more augmented views of it: uint8 (3, 3, H, W), the image's
    own pixels first (``--image-ssl``). Picklable, for the decode workers."""

    pixels: Callable[[Image.Image], torch.Tensor]
    views: Callable[[Image.Image], torch.Tensor]

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB")
        return torch.stack([self.pixels(image), self.views(image), self.views(image)])
