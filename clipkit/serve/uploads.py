"""What decoding uploaded images may cost the server.

A file's size says little of what decoding it takes: a 10 KB PNG of 9400 x 9400 one-bit
pixels passes the pixel limit and took about 460 MB as it was decoded; eight at once took the
server from 157 MB to 4.2 GB, and sixteen in one request 42 s. So each upload is read as far
as its header (a JPEG at the reduced scale the model needs), what its decode will hold is
reckoned from its size and mode (:func:`clipkit.inputs.decode.decode_cost`), and:

- a request's images together may hold at most ``max_decode`` bytes, else it is refused
  (413) before any pixel is decoded;
- the server decodes on ``limits.DECODES_AT_ONCE`` threads of its own (:class:`Decoder`), a
  request's images one at a time, each shrunk to the model's input at once: at most that
  many decodes at once, and the memory they free is reused by the next.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from clipkit.errors import InputError
from clipkit.inputs.decode import DecodeError, decode_cost, finish_decode, open_image

T = TypeVar("T")


class TooLarge(InputError):
    """A request that would cost more than its limit (answered 413)."""


class Decoder:
    """Decodes images on ``threads`` threads of its own, for every request of the server.

    Its own threads, not the requests': memory a thread frees after a decode stays with its
    allocator arena for that thread's next one. Decoding on the request threads, two at a time,
    eight bombs at once still took the server to 2.8 GB; on two threads of its own, 1.2 GB
    (from 0.15 GB; benchmarks/bench_serve_abuse.py). Two threads also bound the decodes at
    once.
    """

    def __init__(self, threads: int) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="clipkit-decode")

    def run(self, work: Callable[[], T]) -> T:
        """``work()`` on a decode thread, when one is free; its result or its exception."""
        return self._pool.submit(work).result()

    def uploads(
        self,
        uploads: Sequence[bytes],
        prepare: Callable[[Any], Any],
        *,
        min_side: int,
        max_pixels: int,
        max_decode: int,
    ) -> list[Any]:
        """Each upload decoded and passed through ``prepare`` (the model's
        ``prepare_image``), one at a time, within the request's budget.

        Raises:
            TooLarge: the images together would hold more than ``max_decode`` bytes.
            InputError: an image that cannot be decoded.
        """
        opened = [_open(data, min_side, max_pixels) for data in uploads]
        cost = sum(decode_cost(image) for image in opened)
        if cost > max_decode:
            raise TooLarge(
                f"Decoding these {len(uploads)} image(s) would take {_mb(cost)} of memory; "
                f"a request may take {_mb(max_decode)}.",
                "Send fewer or smaller images (the model sees them at a few hundred pixels "
                "a side), or start the server with a larger --max-decode-mb.",
            )
        return [self.run(functools.partial(_prepared, image, prepare)) for image in opened]


def _prepared(image: Any, prepare: Callable[[Any], Any]) -> Any:
    return prepare(_finish(image))


def _open(data: bytes, min_side: int, max_pixels: int) -> Any:
    with _as_input_error():
        return open_image(data, min_side=min_side, max_pixels=max_pixels)


def _finish(image: Any) -> Any:
    with _as_input_error():
        return finish_decode(image)


@contextlib.contextmanager
def _as_input_error() -> Iterator[None]:
    """An upload that cannot be decoded is the client's input error (422), saying why."""
    try:
        yield
    except DecodeError as error:
        raise InputError(f"An uploaded image is unreadable: {error.reason}.", "") from None


def _mb(size: int) -> str:
    return f"{size / 2**20:,.0f} MB"
