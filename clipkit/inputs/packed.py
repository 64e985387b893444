"""Strings packed into one buffer, for datasets that forked DataLoader workers read.

A worker forked from the main process shares its memory pages until it writes to them, and
merely reading a Python object writes to it (its reference count). So every worker that reads a
list of a million path strings copies most of the pages those strings live on (PyTorch issue
13246). Packed as one UTF-8 buffer and a numpy array of end offsets, the same strings are two
objects: a worker reading any of them writes nothing but those two headers. (detectron2's
``NumpySerializedList`` does the same for pickled records; torch has no such container yet.)
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator

import numpy as np

# Lone surrogates (text that came from undecodable bytes) survive the round trip.
_ERRORS = "surrogatepass"


class PackedStrings:
    """An immutable sequence of ``str`` stored as one UTF-8 buffer and an offset array."""

    __slots__ = ("_data", "_ends")

    def __init__(self, strings: Iterable[str]) -> None:
        # Appended in place: packing a million paths never holds a second copy of them.
        data, ends = bytearray(), array("q")
        for text in strings:
            data += text.encode("utf-8", _ERRORS)
            ends.append(len(data))
        self._data = data
        self._ends = np.frombuffer(ends, dtype=np.int64) if ends else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, index: int) -> str:
        ends = self._ends
        if index < 0:
            index += len(ends)
        if not 0 <= index < len(ends):
            raise IndexError(f"index {index} out of range for {len(ends)} strings")
        start = int(ends[index - 1]) if index else 0
        return self._data[start : int(ends[index])].decode("utf-8", _ERRORS)

    def __iter__(self) -> Iterator[str]:
        return (self[index] for index in range(len(self)))

    def __repr__(self) -> str:
        return f"PackedStrings({len(self)} strings, {len(self._data)} bytes)"


class PackedGroups:
    """An immutable sequence of string tuples (say, the captions of each image), packed."""

    __slots__ = ("_strings", "_ends")

    def __init__(self, groups: Iterable[Iterable[str]]) -> None:
        flat: list[str] = []
        ends: list[int] = []
        for group in groups:
            flat.extend(group)
            ends.append(len(flat))
        self._strings = PackedStrings(flat)
        self._ends = np.asarray(ends, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._ends)

    def size(self, index: int) -> int:
        """How many strings group ``index`` holds."""
        start, end = self._span(index)
        return end - start

    def item(self, index: int, position: int) -> str:
        """String ``position`` of group ``index``."""
        start, end = self._span(index)
        if not 0 <= position < end - start:
            raise IndexError(f"group {index} has no string {position}")
        return self._strings[start + position]

    def __getitem__(self, index: int) -> tuple[str, ...]:
        start, end = self._span(index)
        return tuple(self._strings[position] for position in range(start, end))

    def _span(self, index: int) -> tuple[int, int]:
        if not 0 <= index < len(self._ends):
            raise IndexError(f"index {index} out of range for {len(self._ends)} groups")
        return (int(self._ends[index - 1]) if index else 0), int(self._ends[index])
