"""The torch-free CLIP tokenizer gives open_clip's token ids, on a corpus of 1,200 strings:
captions, Unicode and emoji, HTML entities, mixed case, runs of whitespace, empty strings,
special tokens and texts longer than the context (truncation ends with the end token)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clipkit.models.tokenizer import ClipTokenizer
from tests.helpers import corpus


@pytest.fixture(scope="module")
def vocab() -> Path:
    import open_clip.tokenizer

    return Path(open_clip.tokenizer.default_bpe())


@pytest.mark.parametrize("context_length", [77, 32])
def test_the_ids_equal_open_clip_s(vocab, context_length):
    from open_clip.tokenizer import SimpleTokenizer

    texts = corpus()
    expected = SimpleTokenizer(context_length=context_length)(texts).numpy()
    ours = ClipTokenizer(vocab, context_length)(texts)
    assert ours.dtype == np.int64 and ours.shape == (len(texts), context_length)
    differing = [texts[i] for i in np.flatnonzero((ours != expected).any(axis=1))]
    assert differing == []
    long = ours[np.flatnonzero((expected != 0).all(axis=1))]
    assert len(long) > 50 and (long[:, -1] == ours[0, 1]).all()  # cut, ended by the end token


@pytest.mark.parametrize("clean", ["whitespace", "canonicalize"])
def test_the_other_cleaners_equal_open_clip_s(vocab, clean):
    from open_clip.tokenizer import SimpleTokenizer

    texts = corpus(300, seed=1)
    expected = SimpleTokenizer(context_length=77, clean=clean)(texts).numpy()
    assert (ClipTokenizer(vocab, 77, clean=clean)(texts) == expected).all()


def test_the_corpus_has_what_it_claims():
    texts = corpus()
    assert len(texts) >= 1000 and "" in texts
    for needle in ("🙂", "&amp;", "  ", "<start_of_text>", "Москва"):
        assert any(needle in text for text in texts), needle


def _in_a_fresh_interpreter(vocab: Path, code: str) -> str:
    """What ``code`` prints, run after ``t = ClipTokenizer(vocab, 77)`` in a new process."""
    code = (
        "import sys\nfrom pathlib import Path\nfrom clipkit.models.tokenizer import ClipTokenizer\n"
        f"t = ClipTokenizer(Path({str(vocab)!r}), 77)\n{code}"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.mark.e2e
def test_tokenizing_imports_no_torch(vocab):
    code = "t(['a dog'])\nprint(' '.join(m for m in ('torch', 'open_clip') if m in sys.modules))"
    assert _in_a_fresh_interpreter(vocab, code) == ""


def test_text_that_skips_ftfy_is_text_ftfy_leaves_unchanged():
    """``fix_text`` imports ftfy only for text it could change; on the rest it must be ftfy."""
    import ftfy

    from clipkit.models.tokenizer import _ASCII_PLAIN, fix_text

    rng = np.random.default_rng(5)
    alphabet = [chr(c) for c in range(128)] + ["&amp;", "&lt;b&gt;", "\x1b[31m", "é", "ﬁ", "“"]
    # Mostly printable ASCII, so that many strings take the fast path and some do not.
    weights = np.array([0.2 if c < 32 or c == 127 else 1.0 for c in range(128)] + [2.0] * 6)
    texts = [
        "".join(rng.choice(alphabet, size=rng.integers(0, 40), p=weights / weights.sum()))
        for _ in range(3000)
    ]
    texts += ["a photo of a dog", "tab\tand\nnewline", "\r\n", "x &amp;amp; y", "a < b & c"]
    skipping = sum(bool(_ASCII_PLAIN.fullmatch(text)) for text in texts)
    assert 300 < skipping < len(texts) - 300  # both ways are taken often
    assert [fix_text(text) for text in texts] == [ftfy.fix_text(text) for text in texts]


@pytest.mark.e2e
def test_an_ascii_query_loads_the_tokenizer_without_ftfy(vocab):
    code = (
        "t(['an emoji of cloud'])\nprint('ftfy' in sys.modules, end=' ')\n"
        "t(['café &amp; bar'])\nprint('ftfy' in sys.modules)"
    )
    assert _in_a_fresh_interpreter(vocab, code) == "False True"
