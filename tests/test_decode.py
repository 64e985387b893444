"""Image and text decoding: orientation, colour modes, animations, bad bytes, size limits."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from clipkit.inputs.decode import DecodeError, content_id, decode_image, decode_text, text_id


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_exif_orientation_is_applied():
    # A 40x20 image stored sideways: EXIF orientation 6 means "rotate 90° clockwise to view".
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    decoded = decode_image(_encode(image, "JPEG", exif=exif))
    assert decoded.size == (20, 40)


def test_transparent_png_is_composited_on_white():
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    image.putpixel((0, 0), (0, 0, 255, 255))  # one opaque blue pixel
    decoded = decode_image(_encode(image, "PNG"))
    assert decoded.mode == "RGB"
    assert decoded.getpixel((1, 1)) == (255, 255, 255)
    assert decoded.getpixel((0, 0)) == (0, 0, 255)


def test_palette_with_transparency():
    image = Image.new("P", (4, 4), 0)
    image.putpalette([10, 20, 30] + [200, 100, 50] * 255)
    image.info["transparency"] = 0
    decoded = decode_image(_encode(image, "PNG", transparency=0))
    assert decoded.getpixel((2, 2)) == (255, 255, 255)


def test_cmyk_jpeg_becomes_rgb():
    decoded = decode_image(_encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG"))
    assert decoded.mode == "RGB"
    r, g, b = decoded.getpixel((4, 4))
    assert r > 200 and g < 60 and b < 60  # cyan and yellow ink fully off red: red


def test_sixteen_bit_greyscale_is_rescaled_not_clipped():
    values = np.full((6, 6), 32768, dtype=np.uint16)  # mid-grey in 16 bits
    decoded = decode_image(_encode(Image.fromarray(values), "PNG"))
    assert decoded.mode == "RGB"
    assert decoded.getpixel((3, 3)) == (128, 128, 128)


def test_greyscale_and_bilevel():
    assert decode_image(_encode(Image.new("L", (5, 5), 77), "PNG")).getpixel((1, 1)) == (77,) * 3
    assert decode_image(_encode(Image.new("1", (5, 5), 1), "BMP")).getpixel((0, 0)) == (255,) * 3


def test_gif_uses_the_first_frame():
    frames = [Image.new("RGB", (6, 6), colour) for colour in ((255, 0, 0), (0, 255, 0))]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert decode_image(data).getpixel((3, 3))[0] > 200


@pytest.mark.parametrize("fmt", ["WEBP", "TIFF", "BMP"])
def test_other_formats(fmt):
    decoded = decode_image(
        _encode(
            Image.new("RGB", (7, 5), (1, 2, 3)),
            fmt,
            **({"lossless": True} if fmt == "WEBP" else {}),
        )
    )
    assert decoded.size == (7, 5) and decoded.getpixel((0, 0)) == (1, 2, 3)


def test_large_jpeg_is_drafted_but_stays_above_the_model_size():
    data = _encode(Image.new("RGB", (2000, 1000), (9, 9, 9)), "JPEG")
    decoded = decode_image(data, min_side=224)
    assert min(decoded.size) >= 224
    assert decoded.size[0] < 2000  # decoded at a reduced DCT scale


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "empty file"),
        (b"this is a text file named .jpg", "not a recognised image format"),
        (_encode(Image.new("RGB", (64, 64)), "JPEG")[:300], "unreadable image"),
    ],
)
def test_bad_bytes(data, match):
    with pytest.raises(DecodeError, match=match):
        decode_image(data)


def test_decompression_bomb_is_refused_before_decoding():
    data = _encode(Image.new("L", (300, 300)), "PNG")
    with pytest.raises(DecodeError, match="exceeds the 10,000-pixel limit"):
        decode_image(data, max_pixels=10_000)


def test_a_max_pixels_above_pillow_s_own_limit_is_the_limit(monkeypatch):
    """#24 D14: --max-pixels above Pillow's limit (179 Mpx) still failed with Pillow's
    message. Pillow's limit is lowered here so that a small image stands for a huge one."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)  # Pillow refuses above 2,000 px
    data = _encode(Image.new("L", (300, 300)), "PNG")  # 90,000 px
    assert decode_image(data, max_pixels=100_000).size == (300, 300)
    with pytest.raises(DecodeError, match="300x300 exceeds the 50,000-pixel limit"):
        decode_image(data, max_pixels=50_000)


def test_text_decoding():
    assert decode_text(b"  hello\n") == ("hello", False)
    assert decode_text("\ufeffbom".encode()) == ("bom", False)
    text, replaced = decode_text(b"caf\xe9 au lait")
    assert replaced and text == "caf\ufffd au lait"
    with pytest.raises(DecodeError, match="empty text"):
        decode_text(b"  \n\t ")


def test_ids_are_content_hashes():
    import hashlib

    assert content_id(b"abc") == hashlib.sha256(b"abc").hexdigest()[:32]
    assert text_id("é") == content_id("é".encode())
