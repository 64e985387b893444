"""CLIP's byte-level BPE tokenizer without torch: the same token ids as open_clip's
``SimpleTokenizer`` (OpenAI's, MIT licence), as a NumPy array.

A port, not a wrapper: open_clip's module imports torch, which the ONNX runtime must not load.
Only the vocabulary file (``bpe_simple_vocab_16e6.txt.gz``, 49,152 merges) is shared; an ONNX
export carries its own copy. ``ftfy`` and ``regex`` (open_clip's own dependencies) clean and
split the text exactly as open_clip does; ``ftfy`` (80 ms to import) only for a text that it
could change.
"""

from __future__ import annotations

import functools
import gzip
import html
import re
import string
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import regex

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
MERGES = 49152 - 256 - 2  # as CLIP: the vocabulary is 49,408 entries with the two specials
SPECIAL_TOKENS = ("<start_of_text>", "<end_of_text>")
CLEANERS = ("lower", "whitespace", "canonicalize")


class ClipTokenizer:
    """Texts to ``(N, context_length)`` int64 ids: start token, BPE ids, end token, zeros.

    A text longer than the context is cut and ends with the end token, as in open_clip.
    """

    def __init__(self, vocab_path: Path, context_length: int, clean: str = "lower") -> None:
        if clean not in CLEANERS:
            raise ValueError(f"unknown text cleaner {clean!r}")
        merges = _read_merges(vocab_path)
        byte_symbols = list(_byte_symbols().values())
        vocab = byte_symbols + [symbol + "</w>" for symbol in byte_symbols]
        vocab += [merge.replace(" ", "") for merge in merges] + list(SPECIAL_TOKENS)
        self.ids = dict(zip(vocab, range(len(vocab)), strict=True))
        # Keyed by the rule's line, "first second" (no symbol holds a space: bytes_to_unicode
        # maps it to "Ġ"): no tuple a rule, which halves the load time.
        self.ranks = dict(zip(merges, range(len(merges)), strict=True))
        self.start_id, self.end_id = (self.ids[token] for token in SPECIAL_TOKENS)
        self.context_length = context_length
        self.clean: Callable[[str], str] = _CLEANERS[clean]
        self._words: dict[str, list[int]] = {}
        specials = "|".join(SPECIAL_TOKENS)
        self._pattern = regex.compile(
            specials + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        tokens = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [self.start_id, *self.encode(text), self.end_id]
            if len(ids) > self.context_length:
                ids = ids[: self.context_length]
                ids[-1] = self.end_id
            tokens[row, : len(ids)] = ids
        return tokens

    def encode(self, text: str) -> list[int]:
        """The BPE ids of ``text``, without the start and end tokens."""
        ids: list[int] = []
        encoder = _byte_symbols()
        for word in self._pattern.findall(self.clean(text)):
            symbols = "".join(encoder[byte] for byte in word.encode("utf-8"))
            ids += self._word_ids(symbols)
        return ids

    def _word_ids(self, word: str) -> list[int]:
        cached = self._words.get(word)
        if cached is None:
            cached = [self.ids[part] for part in self._merge(word)]
            self._words[word] = cached
        return cached

    def _merge(self, word: str) -> list[str]:
        """Apply the merges in rank order until none applies (CLIP's ``bpe``)."""
        if word in SPECIAL_TOKENS:
            return [word]
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = {f"{first} {second}" for first, second in zip(parts, parts[1:], strict=False)}
            best = min(pairs, key=lambda pair: self.ranks.get(pair, MERGES))
            if best not in self.ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(parts):
                if i < len(parts) - 1 and f"{parts[i]} {parts[i + 1]}" == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return parts


@functools.lru_cache(maxsize=1)
def _byte_symbols() -> dict[int, str]:
    """Each byte as a printable character (CLIP's ``bytes_to_unicode``): the printable Latin-1
    bytes stand for themselves, the others for code points from 256 on, in this order (the
    vocabulary's first 256 entries)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    others = [byte for byte in range(256) if byte not in printable]
    return {
        **{byte: chr(byte) for byte in printable},
        **{byte: chr(256 + n) for n, byte in enumerate(others)},
    }


@functools.lru_cache(maxsize=4)
def _read_merges(path: Path) -> list[str]:
    """The first MERGES merge rules (after the version line), each as its line "first second".

    Raises:
        ValueError: the file holds fewer.
    """
    # Only the first fifth of the file is used: decompressing the rest took 20 ms.
    data = b""
    with gzip.open(path) as handle:
        while data.count(b"\n") <= MERGES + 1 and (chunk := handle.read(1 << 18)):
            data += chunk
    lines = data.decode("utf-8", errors="replace").split("\n", MERGES + 1)[1 : MERGES + 1]
    if len(lines) < MERGES or any(line.count(" ") != 1 for line in lines):
        raise ValueError(f"{path} does not hold {MERGES} merge rules of two symbols each")
    return lines


# Text ftfy.fix_text returns unchanged: printable ASCII, tabs and newlines, and no "&" (its
# fixes need an HTML entity, a terminal escape, a control character or a non-ASCII one).
_ASCII_PLAIN = re.compile(r"[\t\n\x20-\x25\x27-\x7e]*")


def fix_text(text: str) -> str:
    """``ftfy.fix_text``, without importing ftfy for text it leaves as it is."""
    if _ASCII_PLAIN.fullmatch(text):
        return text
    import ftfy

    return ftfy.fix_text(text)


def _basic_clean(text: str) -> str:
    return html.unescape(html.unescape(fix_text(text))).strip()


def _clean_lower(text: str) -> str:
    return " ".join(_basic_clean(text).split()).lower()


def _clean_whitespace(text: str) -> str:
    return " ".join(_basic_clean(text).split())


def _clean_canonicalize(text: str) -> str:
    text = _basic_clean(text).replace("_", " ")
    text = text.translate(str.maketrans("", "", string.punctuation)).lower()
    return " ".join(text.split())


_CLEANERS: dict[str, Callable[[str], str]] = {
    "lower": _clean_lower,
    "whitespace": _clean_whitespace,
    "canonicalize": _clean_canonicalize,
}
