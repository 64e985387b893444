"""Embeddings from either runtime as NumPy arrays: what the scoring code, the services and the
server compute on, whichever runtime (torch or ONNX) made the vectors."""

from __future__ import annotations

from typing import Any

import numpy as np


def as_numpy(vectors: Any) -> np.ndarray:
    """Embeddings from either runtime as a NumPy array: a torch tensor (on any device) is
    copied to the CPU as float32; a NumPy array (the ONNX runtime's) is returned as it is."""
    if isinstance(vectors, np.ndarray):
        return vectors
    return vectors.detach().float().cpu().numpy()
