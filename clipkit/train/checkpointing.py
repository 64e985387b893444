"""What a training run writes into its folder while it runs: the last and best checkpoints,
the state a resume continues from (with the objective's momentum encoders, queues and heads),
the failures table and the WiSE-FT weights. Only the main rank writes; the other ranks' calls
do nothing."""

from __future__ import annotations

from pathlib import Path

import torch

from clipkit import store
from clipkit.models.checkpoints import CheckpointMeta
from clipkit.models.openclip import load_model
from clipkit.train.data import Skip
from clipkit.train.objective import Objective
from clipkit.train.session import Session
from clipkit.train.state import (
    BEST_FILE,
    LAST_FILE,
    ResumeState,
    capture_rng,
    save_model,
    save_state,
)


def wise_ft_name(alpha: float) -> str:
    return f"wise-ft-{alpha:g}.safetensors"


class Checkpointer:
    """Saves the run's model and state; keeps the list of skipped pairs and its table."""

    def __init__(
        self,
        session: Session,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler | None,
        objective: Objective | None = None,
    ) -> None:
        self.session = session
        self.optimizer = optimizer
        self.objective = objective
        self.scaler = scaler
        self.skipped: list[Skip] = list(session.data.skipped)
        self.writes = session.world.is_main

    def save(self, state: ResumeState) -> None:
        """``last`` and the resume state, both at ``state.step`` (a completed step)."""
        if not self.writes:
            return
        model = self.session.model
        save_model(self.session.out, LAST_FILE, model.state_dict(), self._meta(state, "last"))
        state.model = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        state.optimizer = self.optimizer.state_dict()
        if self.scaler is not None:
            state.scaler = self.scaler.state_dict()
        state.rng = capture_rng()
        state.objective = self.objective.resume_state() if self.objective is not None else {}
        save_state(self.session.out, state)
        state.model, state.objective = {}, {}

    def save_best(self, state: ResumeState) -> None:
        if self.writes:
            weights = self.session.model.state_dict()
            save_model(self.session.out, BEST_FILE, weights, self._meta(state, "best"))

    def record_skips(self, skips: list[Skip]) -> None:
        """Pairs the decode workers could not read after all: listed with the others."""
        self.skipped += skips
        self.write_failures()

    def write_failures(self) -> None:
        if self.writes:
            store.write_failures(self.session.out, self.skipped)

    def write_wise_ft(self, alpha: float) -> Path | None:
        """The initial and the trained weights mixed, ``(1 - alpha)·initial + alpha·trained``
        (WiSE-FT), for the floating-point tensors; the others are the trained ones."""
        if not self.writes:
            return None
        config = self.session.config
        initial = load_model(config.model, device="cpu").model.state_dict()
        merged = {
            name: _mixed(initial[name], tensor, alpha)
            if tensor.is_floating_point()
            else tensor.detach().cpu()
            for name, tensor in self.session.model.state_dict().items()
        }
        meta = self.session.encoder.checkpoint_meta(
            checkpoint="wise-ft", alpha=str(alpha), trained_from=config.model
        )
        save_model(self.session.out, wise_ft_name(alpha), merged, meta)
        return self.session.out / wise_ft_name(alpha)

    def _meta(self, state: ResumeState, which: str) -> CheckpointMeta:
        return self.session.encoder.checkpoint_meta(
            step=str(state.step),
            checkpoint=which,
            run=str(self.session.out),
            trained_from=self.session.config.model,
        )


def _mixed(initial: torch.Tensor, trained: torch.Tensor, alpha: float) -> torch.Tensor:
    return (1 - alpha) * initial.float() + alpha * trained.detach().cpu().float()
