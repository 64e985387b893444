"""The ``train`` service: fine-tune or train a CLIP model on image-caption pairs.

``run`` holds the service and its loop, ``data`` the pair datasets and batch order, ``step`` one
optimisation step (full batch or GradCache), ``state`` checkpoints and resume, ``evaluation``
the validation and zero-shot evaluation.
"""

from __future__ import annotations

from clipkit.infra.lazy import export_lazily

__all__ = ["TrainConfig", "TrainResult", "train"]
__getattr__, __dir__ = export_lazily(
    __name__, dict.fromkeys(__all__, ".run"), callable_service=True
)
