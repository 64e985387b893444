"""The step loop of a training run: batches from the decode workers, one optimisation step each
(full batch or GradCache), the log, the end-of-epoch evaluation and checkpoints, and a clean
stop on Ctrl-C or a diverged loss (the last completed step is always saved)."""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any

import torch

from clipkit.errors import DivergedError
from clipkit.infra.device import autocast_dtype
from clipkit.infra.progress import ProgressReport
from clipkit.inputs.pipeline import decode_worker_init, start_workers
from clipkit.models.pixels import WithViews, simclr_views
from clipkit.train.checkpointing import Checkpointer
from clipkit.train.data import PairDataset, SeededBatches, collate_pairs
from clipkit.train.evaluation import EpochEvaluation
from clipkit.train.objective import Objective, Targets
from clipkit.train.session import Session, mask_ratio_at
from clipkit.train.state import LAST_FILE, MetricsLog, ResumeState
from clipkit.train.step import (
    StepLosses,
    full_batch_step,
    grad_cache_step,
    learning_rate,
    momentum_targets,
)

MAX_LOGIT_SCALE = math.log(100.0)


@dataclass(frozen=True)
class LoopOutcome:
    """How the loop ended: the last step's losses, stopped early or not, and the speed."""

    losses: StepLosses | None
    interrupted: bool
    samples_per_second: float


class StepLoop:
    """Runs the steps from ``state.step`` to the end of the schedule, or until stopped."""

    def __init__(
        self,
        session: Session,
        network: torch.nn.Module,
        objective: Objective,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler | None,
        log: MetricsLog | None,
        evaluation: EpochEvaluation,
        checkpointer: Checkpointer,
    ) -> None:
        self.session = session
        self.network = network  # the model, or its DistributedDataParallel wrapper
        self.objective = objective
        self.optimizer = optimizer
        self.scaler = scaler
        self.log = log
        self.evaluation = evaluation
        self.checkpointer = checkpointer
        dtype = autocast_dtype(session.encoder.precision.value)
        self.autocast: contextlib.AbstractContextManager[Any] = (
            torch.autocast("cuda", dtype=dtype) if dtype else contextlib.nullcontext()
        )
        self.paused = 0.0  # seconds spent evaluating and checkpointing, not training
        self.mask_ratio = 0.0  # the share of image patches the model drops now
        self.targets = Targets()  # the momentum networks' outputs for the step in progress

    def run(self, state: ResumeState) -> LoopOutcome:
        """Train, then save the last completed step; raises DivergedError after saving when
        the loss stopped being finite."""
        samples, losses, rate = 0, None, 0.0
        interrupted, diverged = False, None
        started = time.perf_counter()
        with _StopFlag() as stop:
            try:
                for pixels, captions, skips in start_workers(self._loader(state)):
                    if skips:
                        self.checkpointer.record_skips(skips)
                    losses = self._gradients(pixels, captions, state.step)
                    # A second Ctrl-C or SIGTERM waits for these two lines: weights updated
                    # but not counted would be saved as the step before (see _StopFlag).
                    with stop.held():
                        self._update()
                        state.step += 1
                    samples += self.session.config.batch_size
                    busy = time.perf_counter() - started - self.paused  # not evaluation
                    rate = samples / max(busy, 1e-9)
                    self._after_step(state, losses, rate)
                    if stop.requested:
                        raise KeyboardInterrupt
            except KeyboardInterrupt:
                interrupted = True
            except _NonFiniteLoss as error:
                interrupted, diverged = True, error
            except RuntimeError:
                if not stop.requested:  # else a DataLoader worker ended by the same Ctrl-C
                    raise
                interrupted = True
        # Saved at the last completed step: an interruption mid-step loses only that step.
        state.finished = not interrupted
        self.checkpointer.save(state)
        if diverged is not None:
            raise self._diverged(diverged.loss, state)
        return LoopOutcome(losses, interrupted, rate)

    def _loader(self, state: ResumeState) -> torch.utils.data.DataLoader:
        session, config = self.session, self.session.config
        batches = SeededBatches(session.schedule, config.seed, state.step, session.world)
        image_size = session.encoder.image_size[0]
        transform: Any = session.augment.pixels
        if self.objective.needs_views:  # the image, then its two views: (3, 3, H, W)
            transform = WithViews(transform, simclr_views(session.encoder.image_size))
        return torch.utils.data.DataLoader(
            PairDataset(session.data.train, transform, config.seed, image_size),
            batch_sampler=batches,
            collate_fn=collate_pairs,
            num_workers=session.workers,
            worker_init_fn=decode_worker_init if session.workers else None,
            pin_memory=session.device.startswith("cuda"),
            # Its own generator: creating the iterator must not draw from the global stream,
            # or a resumed run's dropout would drift from the uninterrupted run's.
            generator=torch.Generator(),
        )

    def _gradients(self, pixels: torch.Tensor, captions: list[str], step: int) -> StepLosses:
        """The loss of one batch and its gradients; the weights are not touched yet."""
        session, config, optimizer = self.session, self.session.config, self.optimizer
        settings = session.settings
        for group in optimizer.param_groups:
            group["lr"] = group.get("lr_scale", 1.0) * learning_rate(
                step, settings["lr"], settings["warmup"], session.schedule.total_steps
            )
        optimizer.zero_grad(set_to_none=True)
        ratio = mask_ratio_at(config, session.schedule, step)
        if ratio != self.mask_ratio:  # FLIP: masked epochs, then unmasked ones
            session.encoder.set_patch_dropout(ratio)
            self.mask_ratio = ratio
        pixels = pixels.to(session.device, non_blocking=True)
        if pixels.dtype == torch.uint8:  # (normalize broadcasts over the views' axis too)
            pixels = session.augment.normalize(pixels)
        views = None
        if pixels.ndim == 5:  # (B, 3, 3, H, W): each image and its two views (--image-ssl)
            pixels, views = pixels[:, 0], pixels[:, 1:]
        tokens = session.encoder.tokenize(captions).to(session.device, non_blocking=True)
        common: dict[str, Any] = {"world": session.world, "autocast": self.autocast}
        micro_batch = config.micro_batch if config.grad_cache else None
        self.targets = momentum_targets(
            self.objective, pixels, tokens, views, micro_batch=micro_batch, **common
        )
        common.update(objective=self.objective, scaler=self.scaler, views=views,
                      targets=self.targets)  # fmt: skip
        if config.grad_cache:
            losses = grad_cache_step(
                self.network, pixels, tokens, micro_batch=config.micro_batch, **common
            )
        else:
            losses = full_batch_step(self.network, pixels, tokens, **common)
        if not math.isfinite(losses.loss):
            raise _NonFiniteLoss(losses.loss)  # before the optimizer touches the weights
        return losses

    def _update(self) -> None:
        """The optimizer's step on the gradients of ``_gradients``; then the momentum
        networks follow and the step's keys are queued (``--queue``, BYOL)."""
        session, config, optimizer = self.session, self.session.config, self.optimizer
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        if config.grad_clip:
            trainable = [p for p in session.model.parameters() if p.requires_grad]
            trainable += self.objective.head_parameters()
            torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        with torch.no_grad():
            session.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)  # as open_clip: 1/t <= 100
        self.objective.after_update(session.model, self.targets)

    def _after_step(self, state: ResumeState, losses: StepLosses, rate: float) -> None:
        session, step = self.session, state.step
        schedule = session.schedule
        if self.log is not None:
            self.log.write(
                {
                    "kind": "step",
                    "step": step,
                    "epoch": (step - 1) // schedule.steps_per_epoch,
                    "loss": losses.loss,
                    **losses.as_record(),
                    **({"mask_ratio": self.mask_ratio} if session.config.mask_ratio else {}),
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "samples_per_s": rate,
                }
            )
        end_of_epoch = step % schedule.steps_per_epoch == 0 or step == schedule.total_steps
        save_every = session.config.save_every
        paused = time.perf_counter()
        if end_of_epoch:
            self.evaluation(state)
        if end_of_epoch or (save_every and step % save_every == 0):
            self.checkpointer.save(state)
        self.paused += time.perf_counter() - paused
        figures = {
            "epoch": (step - 1) // schedule.steps_per_epoch + 1,
            "loss": losses.loss,
            "temperature": losses.temperature,
            "samples_per_s": rate,
        }
        session.progress(ProgressReport("train", step, schedule.total_steps, figures))

    def _diverged(self, loss: float, state: ResumeState) -> DivergedError:
        out = self.session.out
        fixes = [f"a lower --lr (this run: {self.session.settings['lr']:g})"]
        if self.session.encoder.precision.value == "fp16":
            fixes.append("--precision bf16 or fp32 (fp16 overflows more easily)")
        return DivergedError(
            f"The training loss became {loss} at step {state.step + 1}, so training stopped "
            f"there. The weights of step {state.step}, before it, are saved in {out}.",
            f"Start a new run with {' or '.join(fixes)}; -m {out / LAST_FILE} continues "
            "from the saved weights.",
        )


class _StopFlag:
    """Ctrl-C or SIGTERM during the loop finishes the current step, then stops and saves; a
    second one stops at once, except inside ``held()``, which it lets finish first."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}  # the handlers to restore
        self._holding = False
        self._stop_after_held = False

    def __enter__(self) -> _StopFlag:
        with contextlib.suppress(ValueError):  # not the main thread: keep default handling
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """What must happen together or not at all: a second signal waits for its end."""
        self._holding = True
        try:
            yield
        finally:
            self._holding = False
        if self._stop_after_held:
            raise KeyboardInterrupt

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            if not self._holding:
                raise KeyboardInterrupt
            self._stop_after_held = True
        self.requested = True


class _NonFiniteLoss(Exception):
    def __init__(self, loss: float) -> None:
        super().__init__(loss)
        self.loss = loss
