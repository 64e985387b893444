"""``clipkit train``: fine-tune (or train from scratch) with the bidirectional contrastive loss.

The service opens the session (model, verified pairs, schedule: ``session``), prepares the run
folder, builds the optimiser, restores a resumed run, and hands over to the step loop
(``loop``), which evaluates (``evaluation``) and checkpoints (``checkpointing``) each epoch,
under torchrun too. It never prints: progress goes through a callback.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clipkit import store
from clipkit.errors import SkippedInputsError
from clipkit.infra import distributed
from clipkit.infra.atomic import remove_stale_temporaries
from clipkit.infra.locks import writer_lock
from clipkit.infra.progress import ProgressCallback, ProgressReport, no_progress
from clipkit.train.checkpointing import Checkpointer, wise_ft_name
from clipkit.train.config import SCRATCH_LR, TrainConfig, preflight
from clipkit.train.data import Schedule, Skip
from clipkit.train.evaluation import EpochEvaluation, Evaluation
from clipkit.train.loop import LoopOutcome, StepLoop
from clipkit.train.objective import MomentumQueue, Objective
from clipkit.train.session import Session, open_session
from clipkit.train.ssl import ImageSSL
from clipkit.train.state import (
    BEST_FILE,
    LAST_FILE,
    METRICS_FILE,
    PLOT_FILE,
    STATE_FILE,
    MetricsLog,
    ResumeState,
    load_state,
    prepare_run_folder,
    resolved_paths,
    restore_rng,
)
from clipkit.train.step import param_groups

__all__ = ["TrainConfig", "TrainResult", "train", "wise_ft_name"]


@dataclass(frozen=True)
class TrainResult:
    """What a run did and where its artifacts are."""

    run_dir: str
    steps_done: int
    total_steps: int
    train_pairs: int
    val_pairs: int
    skipped: tuple[Skip, ...]
    last_loss: float | None
    evaluations: tuple[Evaluation, ...]
    best_checkpoint: str | None
    last_checkpoint: str | None
    wise_ft_checkpoint: str | None
    plot: str | None
    settings: dict[str, Any]
    already_finished: bool = False
    interrupted: bool = False
    samples_per_second: float = 0.0
    is_main: bool = True


def train(config: TrainConfig, progress: ProgressCallback | None = None) -> TrainResult:
    """Run (or resume) a training run; see :class:`TrainConfig`.

    Raises:
        UsageError: options that contradict each other or lie outside their range.
        InputError: unusable data, detected before the first step.
        ModelSpecError, WeightsUnavailableError, DeviceError: as ``load_model``.
        DivergedError: the loss stopped being finite (the last good step is saved).
        SkippedInputsError: ``strict``, and pairs were skipped (after the run is saved).
    """
    preflight(config)  # before the model and the pairs: mistakes are reported at once
    world = distributed.current_world()
    device, owns_group = distributed.start(world, config.device)
    try:
        session = open_session(config, world, device, progress or no_progress)
        # Held from the folder check to the last checkpoint: a second `clipkit train` (or a
        # second --resume) into this folder is refused rather than interleaving checkpoints.
        lock = writer_lock(
            session.out, f"train -o {session.out}", active=world.is_main, create=not config.resume
        )
        with lock:
            if world.is_main:  # what a killed run was saving is of no use now
                remove_stale_temporaries(session.out)
            result = _run(session)
    finally:
        if owns_group:
            distributed.finish(world)
    if config.strict and result.skipped and result.is_main and not result.interrupted:
        listed_in = str(Path(result.run_dir) / store.FAILURES_FILE)
        raise SkippedInputsError(len(result.skipped), listed_in, result)
    return result


def _run(session: Session) -> TrainResult:
    saved = _prepare_folder(session)
    _prepare_model(session)
    objective = _objective(session)
    decay, lr = session.config.weight_decay, session.settings["lr"]
    groups = param_groups(session.model, decay)
    if objective.ssl is not None:
        # The heads start from random weights: a fine-tuning rate (1e-5) would leave them
        # random, so they learn at least at the from-scratch rate.
        for group in param_groups(objective.ssl, decay):
            groups.append({**group, "lr_scale": max(1.0, SCRATCH_LR / lr)})
    optimizer = torch.optim.AdamW(
        groups,
        lr=lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    fp16 = session.encoder.precision.value == "fp16"
    scaler = torch.amp.GradScaler("cuda") if fp16 else None
    state = saved or ResumeState(best_score=float("-inf"))
    if saved is not None:
        session.model.load_state_dict(saved.model)
        optimizer.load_state_dict(saved.optimizer)
        if scaler is not None and saved.scaler:
            scaler.load_state_dict(saved.scaler)
        if saved.objective:
            objective.restore(saved.objective)
        restore_rng(saved.rng)
    log = None
    if session.world.is_main:
        log = MetricsLog(session.out / METRICS_FILE, state.step if saved else None)
    # A resumed (or finished) run reports every evaluation, not only the new ones.
    evaluations = _logged_evaluations(log) if saved and log is not None else []
    checkpointer = Checkpointer(session, optimizer, scaler, objective)
    if state.finished:
        return _result(session, checkpointer, evaluations, state, already_finished=True)
    if session.world.is_main and state.step == 0:
        note = short_run_note(session.schedule)
        if note:
            session.progress(ProgressReport("train", 0, session.schedule.total_steps, note=note))
    evaluation = EpochEvaluation(session, log, checkpointer, evaluations)
    network = _wrap_ddp(session)
    loop = StepLoop(session, network, objective, optimizer, scaler, log, evaluation, checkpointer)
    outcome = loop.run(state)
    if not outcome.interrupted:
        _finish(session, log, checkpointer)
    return _result(session, checkpointer, evaluations, state, outcome)


SIGLIP_INIT_SCALE, SIGLIP_INIT_BIAS = 10.0, -10.0

# Below this many optimiser steps a run rarely trains a model well: 20 steps (10 epochs of 180
# pairs at batch 64) gave a new user R@1 0.25, where 180 steps (30 epochs at batch 32) gave 0.85.
SHORT_RUN_STEPS = 100
SUGGESTED_STEPS = 200


def short_run_note(schedule: Schedule) -> str:
    """What to tell the user before a run too short to train well ("" for a long enough one):
    its numbers, and the epochs (or batch size) that would give it SUGGESTED_STEPS steps."""
    steps = schedule.total_steps
    if steps >= SHORT_RUN_STEPS:
        return ""
    per_epoch = max(schedule.steps_per_epoch, 1)
    epochs = math.ceil(SUGGESTED_STEPS / per_epoch)
    smaller = max(1, schedule.batch_size // 2)
    return (
        f"this run takes only {_count(steps, 'optimiser step')} "
        f"({_count(schedule.epochs, 'epoch')} of {_count(per_epoch, 'step')}: "
        f"{schedule.pairs} pairs at batch {schedule.batch_size}), and "
        f"fewer than {SHORT_RUN_STEPS} rarely train a model well. For about "
        f"{SUGGESTED_STEPS}, use --epochs {epochs}, or a smaller batch (--batch-size {smaller}) "
        "with more epochs."
    )


def _count(number: int, thing: str) -> str:
    return f"{number} {thing}" + ("" if number == 1 else "s")


def _prepare_folder(session: Session) -> ResumeState | None:
    """Create or check the run folder (main rank); every rank gets the state to resume from."""
    config, world = session.config, session.world
    recorded: dict[str, Any] = resolved_paths(dataclasses.asdict(config))
    recorded["out"] = str(session.out)
    recorded["resolved"] = {k: v for k, v in session.settings.items() if k != "skipped"}
    saved = None
    if world.is_main:
        saved = prepare_run_folder(session.out, recorded, config.resume)
        store.write_failures(session.out, session.data.skipped)
    distributed.barrier(world)
    resumable = config.resume and (session.out / STATE_FILE).is_file()
    if not world.is_main and resumable:
        saved = load_state(session.out / STATE_FILE)
    return saved


def _prepare_model(session: Session) -> None:
    """SigLIP's bias where the loss needs one, the start temperature, whether it learns, and
    which tower is locked."""
    model, config = session.model, session.config
    with torch.no_grad():
        if session.settings["loss"] == "siglip" and session.encoder.logit_bias is None:
            # SigLIP's start (Zhai et al. 2023): t = 10, b = -10, so that the many negative
            # pairs start with a small loss and do not swamp the few positive ones.
            session.encoder.add_logit_bias(SIGLIP_INIT_BIAS)
            model.logit_scale.fill_(math.log(SIGLIP_INIT_SCALE))
        if config.init_temperature is not None:
            model.logit_scale.fill_(math.log(1.0 / config.init_temperature))
    model.logit_scale.requires_grad_(config.learn_temperature)
    if session.encoder.logit_bias is not None:
        # Only SigLIP's loss uses the bias: under CLIP's it would get no gradient (and
        # DistributedDataParallel refuses parameters that get none).
        model.logit_bias.requires_grad_(session.settings["loss"] == "siglip")
    for name, parameter in model.named_parameters():
        image_side = name.startswith("visual.")
        if (config.lock_image and image_side) or (
            config.lock_text and not image_side and "logit_" not in name
        ):
            parameter.requires_grad_(False)
    model.train()


def _objective(session: Session) -> Objective:
    """The loss and what it keeps beside the model: the queue's momentum copy of the model
    (made after ``_prepare_model``, so it has the bias and the locks) and the SSL heads."""
    config, settings, dim = session.config, session.settings, session.encoder.embed_dim
    queue = None
    if config.queue:
        queue = MomentumQueue(session.model, config.queue, dim, settings["momentum"])
    ssl = None
    if config.image_ssl:
        ssl = ImageSSL(config.image_ssl, dim).to(session.device).train()
        if ssl.needs_target:
            ssl.attach_target(session.model.visual)
    return Objective(
        settings["loss"], config.weight, queue=queue, ssl=ssl,
        ssl_weight=settings["ssl_weight"] or 0.0, momentum=settings["momentum"] or 0.0,
    )  # fmt: skip


def _wrap_ddp(session: Session) -> torch.nn.Module:
    if not session.world.distributed:
        return session.model
    from torch.nn.parallel import DistributedDataParallel

    ids = [session.world.local_rank] if session.device.startswith("cuda") else None
    return DistributedDataParallel(session.model, device_ids=ids)


def _logged_evaluations(log: MetricsLog) -> list[Evaluation]:
    return [Evaluation.from_record(r) for r in log.read() if r.get("kind") == "eval"]


def _finish(session: Session, log: MetricsLog | None, checkpointer: Checkpointer) -> None:
    """After the last step: the training curves, and the WiSE-FT weights if asked for."""
    if log is None:  # not the main rank
        return
    from clipkit.plots import plot_training

    plot_training(log.read(), session.out / PLOT_FILE)
    if session.config.wise_ft is not None:
        checkpointer.write_wise_ft(session.config.wise_ft)


def _result(
    session: Session,
    checkpointer: Checkpointer,
    evaluations: list[Evaluation],
    state: ResumeState,
    outcome: LoopOutcome | None = None,
    *,
    already_finished: bool = False,
) -> TrainResult:
    out, alpha = session.out, session.config.wise_ft
    wise = out / wise_ft_name(alpha) if alpha is not None else None
    losses = outcome.losses if outcome is not None else None
    return TrainResult(
        run_dir=str(out),
        steps_done=state.step,
        total_steps=session.schedule.total_steps,
        train_pairs=len(session.data.train),
        val_pairs=len(session.data.val),
        skipped=tuple(checkpointer.skipped),
        last_loss=losses.loss if losses else None,
        evaluations=tuple(evaluations),
        best_checkpoint=_existing(out / BEST_FILE),
        last_checkpoint=_existing(out / LAST_FILE),
        wise_ft_checkpoint=_existing(wise) if wise else None,
        plot=_existing(out / PLOT_FILE),
        settings=session.settings,
        already_finished=already_finished,
        interrupted=outcome.interrupted if outcome is not None else False,
        samples_per_second=outcome.samples_per_second if outcome is not None else 0.0,
        is_main=session.world.is_main,
    )


def _existing(path: Path) -> str | None:
    return str(path) if path.is_file() else None
