"""MoCo/ALBEF's building blocks: a FIFO queue of keys and the momentum (EMA) update.

The queue holds the last K keys (image or text embeddings of earlier steps), the oldest
overwritten first; the momentum encoder's parameters follow the trained ones,
``θ_k ← M·θ_k + (1 - M)·θ_q``, with no gradient. Both are saved with a run for --resume.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch


class KeyQueue:
    """A FIFO ring of at most ``size`` keys of dimension ``dim``."""

    def __init__(self, size: int, dim: int, device: torch.device | str = "cpu") -> None:
        self.keys = torch.zeros(size, dim, device=device)
        self.position = 0  # where the next key goes
        self.filled = 0  # how many rows hold keys

    @property
    def size(self) -> int:
        return len(self.keys)

    def enqueue(self, keys: torch.Tensor) -> None:
        """Add (B, D) keys, overwriting the oldest once full; B > size keeps the last size."""
        if not self.size:
            return
        keys = keys.detach()[-self.size :]
        rows = (self.position + torch.arange(len(keys), device=self.keys.device)) % self.size
        self.keys[rows] = keys.to(self.keys)
        self.position = (self.position + len(keys)) % self.size
        self.filled = min(self.size, self.filled + len(keys))

    def current(self) -> torch.Tensor:
        """(filled, D) the keys held, oldest first."""
        if self.filled < self.size:
            return self.keys[: self.filled]
        return torch.cat([self.keys[self.position :], self.keys[: self.position]])

    def state_dict(self) -> dict[str, torch.Tensor | int]:
        return {"keys": self.keys.detach().cpu().clone(), "position": self.position,
                "filled": self.filled}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        self.keys.copy_(state["keys"])
        self.position, self.filled = int(state["position"]), int(state["filled"])


@torch.no_grad()
def momentum_update(
    targets: Iterable[torch.Tensor], sources: Iterable[torch.Tensor], momentum: float
) -> None:
    """``θ_k ← M·θ_k + (1 - M)·θ_q`` for each (target, source) pair of tensors, in place."""
    for target, source in zip(targets, sources, strict=True):
        target.mul_(momentum).add_(source.detach(), alpha=1.0 - momentum)


class MomentumCopy:
    """A frozen copy of a module that follows it by EMA (MoCo's key encoder, BYOL's target).

    Kept in eval mode, so it never drops patches or draws from the random streams; buffers
    (a ResNet's batch-norm statistics) are copied, not averaged. Not an ``nn.Module``
    attribute of anything that trains, so its weights reach neither the optimizer nor the
    exported model, only the run's resume state.
    """

    def __init__(self, source: torch.nn.Module) -> None:
        self.module = copy.deepcopy(source).eval().requires_grad_(False)

    @torch.no_grad()
    def follow(self, source: torch.nn.Module, momentum: float) -> None:
        """``θ_k ← M·θ_k + (1 - M)·θ_q`` for every parameter; buffers copied."""
        momentum_update(self.module.parameters(), source.parameters(), momentum)
        for target, buffer in zip(self.module.buffers(), source.buffers(), strict=True):
            target.copy_(buffer)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
