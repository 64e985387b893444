"""``--image-ssl``: a self-supervised term on two augmented views of each image (SLIP, DeCLIP).

The views go through the image tower with the batch (one forward, so GradCache and
DistributedDataParallel see them like any image); their unit-norm embeddings then go through
small heads that live here, beside the model: a projection MLP, a predictor for SimSiam and
BYOL, prototypes for SwAV. The heads run on the global (gathered) batch, so every rank
computes the same head gradients and no gradient synchronisation is needed for them. They are
trained and saved in the run's resume state, never in the exported model.
"""

from __future__ import annotations

import torch
from torch import nn

from clipkit.config import IMAGE_SSL_METHODS
from clipkit.score.ssl_losses import byol_loss, nt_xent, simsiam_loss, swav_loss
from clipkit.train.momentum import MomentumCopy

HIDDEN, PROJECTED, PREDICTOR_HIDDEN = 1024, 256, 256  # small-scale versions of SLIP's 4096/256
PROTOTYPES = 256
SIMCLR_TEMPERATURE = 0.1  # SLIP's
SWAV_TEMPERATURE = 0.1


def _mlp(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    """Linear, batch norm, ReLU, Linear: the heads of SimCLR/SimSiam/BYOL, shortened."""
    return nn.Sequential(
        nn.Linear(inputs, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
        nn.Linear(hidden, outputs),
    )  # fmt: skip


class ImageSSL(nn.Module):
    """The heads of one method and its loss on (2, S, D) view embeddings.

    BYOL's target (a momentum copy of the image tower and the projector) is made by
    :meth:`attach_target` and followed by :meth:`follow`.
    """

    def __init__(self, method: str, dim: int) -> None:
        super().__init__()
        assert method in IMAGE_SSL_METHODS, method
        self.method = method
        self.projector = _mlp(dim, HIDDEN, PROJECTED)
        self.predictor = (
            _mlp(PROJECTED, PREDICTOR_HIDDEN, PROJECTED) if method in ("simsiam", "byol") else None
        )
        self.prototypes = nn.Linear(PROJECTED, PROTOTYPES, bias=False) if method == "swav" else None
        self.target_tower: MomentumCopy | None = None
        self.target_projector: MomentumCopy | None = None

    @property
    def needs_target(self) -> bool:
        return self.method == "byol"

    def attach_target(self, image_tower: nn.Module) -> None:
        """BYOL: the momentum target, a copy of the image tower and of the projector."""
        self.target_tower = MomentumCopy(image_tower)
        self.target_projector = MomentumCopy(self.projector)

    @torch.no_grad()
    def targets(self, views: torch.Tensor) -> torch.Tensor:
        """BYOL's targets of (V, 3, H, W) local view pixels: (V, PROJECTED), no gradient."""
        assert self.target_tower is not None and self.target_projector is not None
        embedded = nn.functional.normalize(self.target_tower.module(views).float(), dim=-1)
        return self.target_projector.module(embedded)

    def follow(self, image_tower: nn.Module, momentum: float) -> None:
        """After the optimiser's step: the target moves by EMA toward the online networks."""
        if self.target_tower is not None and self.target_projector is not None:
            self.target_tower.follow(image_tower, momentum)
            self.target_projector.follow(self.projector, momentum)

    def loss(self, views: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """The method's loss of (2, S, D) view embeddings (and, for BYOL, (2, S, P) targets)."""
        first, second = self.projector(views.flatten(0, 1).float()).unflatten(0, (2, -1))
        if self.method == "simclr":
            return nt_xent(first, second, SIMCLR_TEMPERATURE)
        if self.method == "swav":
            assert self.prototypes is not None
            prototypes = nn.functional.normalize(self.prototypes.weight, dim=-1)
            scores = [nn.functional.normalize(z, dim=-1) @ prototypes.T for z in (first, second)]
            return swav_loss(scores[0], scores[1], SWAV_TEMPERATURE)
        assert self.predictor is not None
        predicted = self.predictor(torch.cat([first, second])).chunk(2)
        if self.method == "simsiam":
            return simsiam_loss((predicted[0], predicted[1]), (first, second))
        assert targets is not None, "BYOL's loss needs its momentum targets"
        return byol_loss((predicted[0], predicted[1]), (targets[0], targets[1]))

    def resume_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """The heads and, for BYOL, the target: what ``--resume`` needs besides the optimizer."""
        state = {"heads": {k: v.detach().cpu().clone() for k, v in self.state_dict().items()}}
        if self.target_tower is not None and self.target_projector is not None:
            state["target_tower"] = self.target_tower.state_dict()
            state["target_projector"] = self.target_projector.state_dict()
        return state

    def restore(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        self.load_state_dict(state["heads"])
        if self.target_tower is not None and self.target_projector is not None:
            self.target_tower.load_state_dict(state["target_tower"])
            self.target_projector.load_state_dict(state["target_projector"])
