"""Every script in examples/ runs on tiny generated data (offline, built-in model)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.test_embed import make_images

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_embed_and_search_example(tmp_path):
    make_images(tmp_path / "photos", 6)
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "embed_and_search.py"), str(tmp_path / "photos"),
         "--work", str(tmp_path / "work")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "embedded 6, skipped 0" in out.stdout
    assert "index Flat: 6 rows" in out.stdout
    # The image query finds itself first.
    image_block = out.stdout.split("image:")[1]
    assert "1. 1.000" in image_block and "img0000.jpg" in image_block.splitlines()[1]
