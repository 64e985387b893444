"""The ``train`` service: fine-tune or train a CLIP model on image-caption pairs.

``config`` holds what a run is asked and the checks that need no model, ``run`` the
service, ``session`` what a run fixes before its first step, ``loop`` the
step loop, ``step`` one optimisation step (full batch or GradCache), ``evaluation`` the
end-of-epoch evaluation, ``checkpointing`` what the run writes as it goes, ``state`` the run
folder's files and resume, ``data`` the pair datasets and the batch order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from clipkit.infra.lazy import export_lazily

if TYPE_CHECKING:  # what type checkers and editors see; at run time, imported on first use
    from clipkit.train.config import TrainConfig
    from clipkit.train.run import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]
__getattr__, __dir__ = export_lazily(__name__, callable_service=True)
