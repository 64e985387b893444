"""Mistakes that need no model are reported before any heavy import (issue #25, item 6).

A mistyped path, a missing column, an option out of range or a model spec that cannot parse
used to take 5 s to report, because torch and open_clip were imported first. Each case runs
the real console entry point in a fresh interpreter and checks the message, the exit code, and
that torch, open_clip, faiss and onnxruntime were never imported (the 0.3-0.5 s these errors
now take is measured in benchmarks/bench_early_errors.py, not asserted here).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

HEAVY = ("torch", "open_clip", "faiss", "onnxruntime")
RUN = """
import json, sys
from clipkit.cli import main
sys.argv = ["clipkit", *json.loads(sys.argv[1])]
try:
    main()
    code = 0
except SystemExit as stop:
    code = stop.code
heavy = [name for name in {heavy!r} if name in sys.modules]
print(json.dumps({{"code": code, "heavy": heavy}}), file=sys.stderr)
"""

CASES = [
    (["train", "missing", "-o", "run"], 1, "Pair source missing does not exist"),
    (["train", "t.csv", "-o", "run", "--image-column", "nope"], 1, "has no column 'nope'"),
    (["train", "t.csv", "-o", "run", "--lambda", "2"], 2, "--lambda must be in [0, 1]"),
    (["train", "t.csv", "-o", "run", "--val-split", "1"], 2, "--val-split must be in"),
    (["train", "t.csv", "-o", "run", "-m", "hf-hub:"], 1, "does not name a Hugging Face"),
    (["train", "t.csv", "-o", "run", "--val", "nope"], 1, "Pair source nope does not exist"),
    (["train", "t.csv", "-o", "run", "--eval-classes", "nope"], 1, "nope is not a folder"),
    (["embed", "missing", "-o", "out"], 1, "missing does not exist"),
    (["embed", "t.csv", "-o", "out", "--image-column", "nope"], 1, "has no column 'nope'"),
    (["embed", "t.csv", "-o", "out", "-m", "hf-hub:"], 1, "does not name a Hugging Face"),
    (["index", "missing", "-o", "idx"], 1, "Embeddings folder missing does not exist"),
    (["index", "t.csv", "-o", "idx"], 1, "t.csv is a file, not an embeddings folder"),
    (["index", "imgs", "-o", "idx"], 1, "imgs holds no embeddings"),
    (["search", "x", "--embeddings", "missing"], 1, "Embeddings folder missing does not"),
    (["search", "x", "--index", "missing"], 1, "missing is not a clipkit index"),
    (["search", "x", "--index", "missing", "-m", "hf-hub:"], 1, "does not name a Hugging"),
    (["zeroshot", "missing", "--labels", "a,b"], 1, "missing does not exist"),
    (["zeroshot", "imgs"], 2, "No labels given"),
    (["zeroshot", "imgs", "--labels", "a,b", "-m", "hf-hub:"], 1, "does not name a Hugging"),
    (["audit", "missing"], 1, "Pair source missing does not exist"),
    (["audit", "t.csv", "--text-column", "nope"], 1, "has no column 'nope'"),
    (["audit", "t.csv", "--fpr", "2"], 2, "--fpr must lie in (0, 1)"),
    (["audit", "t.csv", "-m", "hf-hub:"], 1, "does not name a Hugging Face"),
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("early")
    (root / "t.csv").write_text("image,caption\na.png,a cat\nb.png,a dog\n")
    (root / "imgs").mkdir()
    Image.new("RGB", (8, 8)).save(root / "imgs" / "a.png")
    return root


@pytest.mark.e2e
@pytest.mark.parametrize(("args", "code", "message"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_error_comes_before_any_heavy_import(workdir, args, code, message):
    done = subprocess.run(
        [sys.executable, "-c", RUN.format(heavy=HEAVY), json.dumps(args)],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
        env={**_clean_env(), "COLUMNS": "200"},
    )
    said, _, tail = done.stderr.rpartition("\n{")
    outcome = json.loads("{" + tail)
    assert outcome["code"] == code, done.stderr
    assert message in " ".join(said.split()), said
    assert "Hint:" in said
    assert outcome["heavy"] == [], f"imported {outcome['heavy']} before saying: {said}"


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("CLIPKIT_")}
