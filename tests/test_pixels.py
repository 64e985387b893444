"""Pixels in two steps (``clipkit.pixels``): the uint8 resize-and-crop in the workers plus the
batched normalisation equal open_clip's whole transform exactly, for each resize mode; odd
transforms stay whole; the Encoder takes either kind of pixels."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from clipkit.models.pixels import split_transform

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def _photos(sizes):
    rng = np.random.default_rng(7)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


@pytest.mark.parametrize(
    ("size", "resize_mode"),
    [(64, "shortest"), (64, "longest"), (64, "squash"), ((48, 64), "shortest"), (32, "longest")],
)
def test_split_equals_open_clips_whole_transform_exactly(size, resize_mode):
    transform = open_clip.image_transform(
        size, is_train=False, mean=MEAN, std=STD, resize_mode=resize_mode, fill_color=0
    )
    split = split_transform(transform)
    assert split.geometry is not None and split.mean == MEAN and split.std == STD
    images = _photos([(320, 240), (64, 64), (50, 90), (31, 17), (200, 65)])
    pixels = torch.stack([split.pixels(image) for image in images])
    assert pixels.dtype == torch.uint8
    expected = torch.stack([transform(image) for image in images])
    assert torch.equal(split.normalize(pixels), expected)


def test_normalize_is_the_definition():
    # One pixel worked by hand: (v / 255 - mean) / std per channel.
    split = split_transform(open_clip.image_transform(8, is_train=False, mean=MEAN, std=STD))
    pixels = torch.tensor([0, 128, 255], dtype=torch.uint8).view(1, 3, 1, 1)
    expected = [
        (0 / 255 - MEAN[0]) / STD[0],
        (128 / 255 - MEAN[1]) / STD[1],
        (255 / 255 - MEAN[2]) / STD[2],
    ]
    torch.testing.assert_close(
        split.normalize(pixels).flatten(), torch.tensor(expected), rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize(
    "transform",
    [
        T.Compose([T.Resize(8), T.CenterCrop(8), T.ToTensor()]),  # no Normalize
        T.Compose([T.Resize(8), T.CenterCrop(8), T.ToTensor(), T.Normalize(MEAN, STD)]),  # no RGB
        lambda image: T.functional.to_tensor(image.resize((8, 8))),  # not a Compose
    ],
)
def test_transforms_that_do_not_split_stay_whole(transform):
    split = split_transform(transform)
    assert split.geometry is None
    image = _photos([(20, 10)])[0]
    assert torch.equal(split.pixels(image), transform(image))


def test_encoder_takes_uint8_or_float_pixels_alike(tiny_encoder):
    images = _photos([(320, 240), (70, 90), (64, 64)])
    prepared = torch.stack([tiny_encoder.prepare_image(image) for image in images])
    preprocessed = torch.stack([tiny_encoder.preprocess_image(image) for image in images])
    assert prepared.dtype == torch.uint8 and prepared.shape == (3, 3, 64, 64)
    assert torch.equal(
        tiny_encoder.encode_images(prepared), tiny_encoder.encode_images(preprocessed)
    )


def test_split_training_augmentation_draws_the_same_crops(tiny_encoder):
    # The random crop draws from torch's generator; the split must draw exactly as the whole.
    augment = tiny_encoder.train_transform()
    split = split_transform(augment)
    assert split.geometry is not None
    for seed, image in enumerate(_photos([(320, 240), (90, 120), (64, 64)])):
        torch.manual_seed(seed)
        expected = augment(image)
        torch.manual_seed(seed)
        assert torch.equal(split.normalize(split.pixels(image)[None])[0], expected)


@pytest.mark.gpu
def test_normalising_on_cuda_matches_the_cpu_transform():
    transform = open_clip.image_transform(224, is_train=False, mean=MEAN, std=STD)
    split = split_transform(transform)
    images = _photos([(320, 240), (500, 375), (224, 224)])
    pixels = torch.stack([split.pixels(image) for image in images]).cuda()
    expected = torch.stack([transform(image) for image in images])
    torch.testing.assert_close(split.normalize(pixels).cpu(), expected, rtol=0, atol=1e-6)
