"""Turning file bytes into model inputs: robust image decoding and text normalisation.

Every failure raises :class:`DecodeError` with a short reason, so that bulk jobs can skip the
item, count it and list it, instead of aborting.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import stat
import warnings
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
TEXT_SUFFIXES = frozenset({".txt"})
# Image formats people keep photos in that clipkit does not decode: listed as skipped, with
# what to do, rather than passed over as if they were not images.
UNSUPPORTED_IMAGE_SUFFIXES = frozenset({".heic", ".heif", ".avif", ".jxl"})


def unsupported_image(suffix: str) -> str:
    """Why an image of this (lower-case) suffix is skipped."""
    return f"{suffix} images are not decoded by clipkit: convert them to JPEG or PNG"


def unreadable_folder(error: OSError) -> str:
    """Why ``os.walk`` could not list a folder: a skip to report, never a silent gap."""
    return f"folder not readable: {error.strerror or error}"


# Images above this many pixels are refused before decoding (a decompression bomb costs
# memory before it costs time). 89.5 Mpx is Pillow's own warning threshold.
DEFAULT_MAX_PIXELS = 89_478_485
ID_BYTES = 16


class DecodeError(Exception):
    """An input that cannot be turned into model input; ``stage`` says where it failed."""

    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(reason)
        self.stage = stage
        self.reason = reason


def require_regular_file(mode: int) -> None:
    """Raise a DecodeError unless ``mode`` (``st_mode``) is a regular file's.

    Reading a named pipe waits for a writer, forever: one named ``x.jpg`` in a folder hung a
    decode worker, and with it the whole run (and its exit).
    """
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise DecodeError("read", "is a directory, not a file")
    raise DecodeError("read", "not a regular file (a named pipe, socket or device)")


def content_id(data: bytes) -> str:
    """A stable id for content: the first 128 bits of its SHA-256, in hex."""
    return hashlib.sha256(data).hexdigest()[: 2 * ID_BYTES]


def text_id(text: str) -> str:
    """The id of a text: the content id of its UTF-8 bytes."""
    return content_id(text.encode("utf-8"))


def decode_image(data: bytes, *, min_side: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS):
    """Decode image bytes to an RGB PIL image, oriented as the camera intended.

    Args:
        data: the file's bytes.
        min_side: the size the model resizes to; JPEGs are decoded at a reduced scale whose
            sides stay >= this (Pillow's ``draft``), about 2x less decode work for large files.
        max_pixels: refuse larger images before decoding them.

    Raises:
        DecodeError: empty, truncated, unidentified, oversized or otherwise unreadable data.
    """
    return finish_decode(open_image(data, min_side=min_side, max_pixels=max_pixels))


def open_image(data: bytes, *, min_side: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS):
    """The image in ``data`` read as far as its header: its size and mode are known (after
    ``draft``, see :func:`decode_image`), no pixel is decoded yet.

    Raises:
        DecodeError: as :func:`decode_image`, for what the header shows.
    """
    if not data:
        raise DecodeError("read", "empty file")
    with _decode_errors():
        # Pillow warns (and later raises) on huge images: its limit (179 Mpx) would override a
        # higher --max-pixels with its own message. The size is checked here instead, from
        # the header, before any pixel is decoded; this is clipkit's only Image.open.
        Image.MAX_IMAGE_PIXELS = None
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > max_pixels:
            raise DecodeError("decode", f"{width}x{height} exceeds the {max_pixels:,}-pixel limit")
        if min_side and image.format == "JPEG":
            image.draft("RGB", (min_side, min_side))
        return image


def finish_decode(image: Image.Image) -> Image.Image:
    """An image from :func:`open_image`, decoded: RGB, oriented as the camera intended.

    Raises:
        DecodeError: truncated or otherwise unreadable data.
    """
    with _decode_errors():
        image.seek(0)  # first frame of animations
        image.load()
        return to_rgb(ImageOps.exif_transpose(image))


# Bytes a pixel takes in Pillow's memory, by mode: one for 1-bit, grey and palette images, two
# for 16-bit grey, four for everything else (RGB included: Pillow pads it to four).
_ONE_BYTE_MODES = frozenset({"1", "L", "P"})
_TWO_BYTE_MODES = frozenset({"I;16", "I;16B", "I;16L"})
# What converting to RGB adds on top, a pixel: 16- and 32-bit modes pass through float64, a
# grey copy and the RGB one (8 + 1 + 4); those with alpha, an RGBA copy, a white one and the
# blend (3 x 4) before the RGB one; the others, the RGB copy alone.
_WIDE_MODES = frozenset({*_TWO_BYTE_MODES, "I", "F"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


def decode_cost(image: Image.Image) -> int:
    """The memory that :func:`finish_decode` holds at its peak for ``image`` (opened, not
    yet decoded), in bytes: its pixels as the file's mode stores them, a rotated copy (where
    EXIF asks for one; always counted, as a PNG may say so only after its pixels), and what
    turning them into RGB takes. The file's own size says nothing of this: a 10 KB PNG can
    hold 88 million pixels."""
    width, height = image.size
    mode = image.mode
    stored = 1 if mode in _ONE_BYTE_MODES else 2 if mode in _TWO_BYTE_MODES else 4
    if mode == "RGB":
        converted = 0
    elif mode in _WIDE_MODES:
        converted = 8 + 1 + 4
    elif mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
        converted = 3 * 4 + 4
    else:
        converted = 4
    return width * height * (2 * stored + converted)


@contextlib.contextmanager
def _decode_errors() -> Iterator[None]:
    """Pillow's many failures as one DecodeError each (and its bomb warning silenced)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    except DecodeError:
        raise
    except UnidentifiedImageError:
        raise DecodeError("decode", "not a recognised image format") from None
    except Image.DecompressionBombError as error:
        raise DecodeError("decode", str(error)) from None
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise DecodeError("decode", f"unreadable image: {error}") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is composited onto white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _wide_to_rgb(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def _wide_to_rgb(image: Image.Image) -> Image.Image:
    # Pillow's convert() clips 16-bit values at 255 (a white image); rescale instead.
    values = np.asarray(image, dtype=np.float64)
    top = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
    if image.mode == "F":
        low, high = float(values.min(initial=0)), float(values.max(initial=1))
        values, top = values - low, max(high - low, 1e-12)
    grey = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def decode_text(data: bytes) -> tuple[str, bool]:
    """Decode text bytes as UTF-8 (BOM allowed), trimmed.

    Returns:
        The text and whether invalid bytes had to be replaced.

    Raises:
        DecodeError: the text is empty after trimming.
    """
    try:
        text, replaced = data.decode("utf-8-sig"), False
    except UnicodeDecodeError:
        text, replaced = data.decode("utf-8-sig", errors="replace"), True
    text = text.strip()
    if not text:
        raise DecodeError("read", "empty text")
    return text, replaced
