"""What decoding uploads may cost (issue #37 D4): the memory a decode holds, reckoned from the
header by definition; a request over its budget refused before any pixel is decoded; the
server's decodes at once bounded, a request waiting for room; JPEGs decoded at the model's
scale. The server's routes: tests/test_serve.py."""

from __future__ import annotations

import io
import threading

import pytest
from PIL import Image

from clipkit.errors import InputError
from clipkit.inputs.decode import decode_cost, decode_image, open_image
from clipkit.serve import uploads
from clipkit.serve.limits import DECODES_AT_ONCE
from clipkit.serve.uploads import Decoder, TooLarge


def _encoded(mode: str, size: tuple[int, int], fmt: str = "PNG", **info) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format=fmt, **info)
    return buffer.getvalue()


# Bytes a pixel, by Pillow's storage (1-bit, grey, palette: 1; 16-bit grey: 2; else 4), twice
# (the pixels and a rotated copy), plus the conversion to RGB: none for RGB, 8 + 1 + 4 from
# 16-bit, 3 x 4 + 4 through RGBA for alpha, 4 otherwise.
@pytest.mark.parametrize(
    ("mode", "per_pixel", "fmt"),
    [("1", 2 + 4, "PNG"), ("L", 2 + 4, "PNG"), ("P", 2 + 4, "PNG"), ("RGB", 8, "PNG"),
     ("RGBA", 8 + 16, "PNG"), ("LA", 8 + 16, "PNG"), ("I;16", 4 + 13, "PNG"),
     ("I", 8 + 13, "TIFF"), ("CMYK", 8 + 4, "JPEG")],
)  # fmt: skip
def test_a_decode_s_cost_is_reckoned_from_the_header_by_mode(mode, per_pixel, fmt):
    image = open_image(_encoded(mode, (40, 30), fmt))
    assert image.mode == mode
    assert decode_cost(image) == 40 * 30 * per_pixel


def test_a_ten_kilobyte_png_can_cost_hundreds_of_megabytes():
    bomb = _encoded("1", (9400, 9400))
    assert len(bomb) < 20_000
    assert decode_cost(open_image(bomb)) == 9400 * 9400 * 6  # 530 MB


def test_a_jpeg_costs_what_it_takes_at_the_model_s_scale():
    # draft() picks the largest of JPEG's 1/2, 1/4, 1/8 reductions that keeps both sides
    # >= 224: 1000 / 4 = 250 (1000 / 8 = 125 would be too small)
    photo = _encoded("RGB", (2000, 1000), fmt="JPEG")
    opened = open_image(photo, min_side=224)
    assert opened.size == (500, 250)
    assert decode_cost(opened) == 500 * 250 * 8
    assert decode_image(photo, min_side=224).size == (500, 250)


def test_a_request_over_its_budget_is_refused_before_any_pixel_is_decoded(monkeypatch):
    decoded = []
    monkeypatch.setattr(uploads, "finish_decode", lambda image: decoded.append(image) or image)
    grey = _encoded("L", (100, 100))  # 10,000 pixels x 6 bytes each
    decoder = Decoder(DECODES_AT_ONCE)
    options = {"min_side": 224, "max_pixels": 10**6}
    with pytest.raises(TooLarge, match="would take") as refused:
        decoder.uploads([grey, grey], lambda image: image.size, max_decode=119_999, **options)
    assert "--max-decode-mb" in refused.value.hint
    assert decoded == []
    sizes = decoder.uploads([grey, grey], lambda image: image.size, max_decode=120_000, **options)
    assert sizes == [(100, 100), (100, 100)] and len(decoded) == 2


def test_an_unreadable_upload_is_an_input_error_naming_why():
    with pytest.raises(InputError, match="unreadable: not a recognised image format"):
        Decoder(1).uploads([b"not an image"], lambda image: image, min_side=224,
                           max_pixels=10**6, max_decode=10**6)  # fmt: skip


def test_every_decode_runs_on_the_decoder_s_own_few_threads():
    """Eight requests of two images each: all sixteen decodes on DECODES_AT_ONCE threads of
    the decoder's, none on a request's thread (what a thread frees stays with it for its next
    decode). Threads are told apart by name: an ended thread's ident is given to the next."""
    decoder = Decoder(DECODES_AT_ONCE)
    grey = _encoded("L", (64, 64))
    decoding: list[str] = []

    def prepare(image):
        decoding.append(threading.current_thread().name)
        return image.size

    def request():
        decoder.uploads([grey, grey], prepare, min_side=32, max_pixels=10**6, max_decode=10**6)

    clients = [threading.Thread(target=request, name=f"request-{n}") for n in range(8)]
    for client in clients:
        client.start()
    for client in clients:
        client.join(60)
    assert len(decoding) == 16
    assert len(set(decoding)) <= DECODES_AT_ONCE
    assert all(name.startswith("clipkit-decode") for name in decoding), set(decoding)
