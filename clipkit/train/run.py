"""``clipkit train``: fine-tune (or train from scratch) with the bidirectional contrastive loss.

The service reads and verifies the pairs, prepares the run folder, builds the optimiser and
runs the step loop (full batch or GradCache, one process or many under torchrun), evaluating
and checkpointing each epoch. It never prints: progress goes through a callback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clipkit import store
from clipkit.errors import DivergedError, SkippedInputsError, UsageError
from clipkit.infra import distributed
from clipkit.infra.device import autocast_dtype, seed_everything
from clipkit.infra.locks import writer_lock
from clipkit.infra.progress import ProgressCallback, ProgressReport, no_progress
from clipkit.inputs.pipeline import decode_worker_init, default_workers, start_workers
from clipkit.models.openclip import Encoder, load_model
from clipkit.models.pixels import split_transform
from clipkit.train.data import PairDataset, Schedule, SeededBatches, collate_pairs, load_pairs
from clipkit.train.evaluation import Evaluation, evaluate
from clipkit.train.state import (
    BEST_FILE,
    LAST_FILE,
    METRICS_FILE,
    PLOT_FILE,
    STATE_FILE,
    MetricsLog,
    ResumeState,
    capture_rng,
    load_state,
    prepare_run_folder,
    restore_rng,
    save_model,
    save_state,
)
from clipkit.train.step import full_batch_step, grad_cache_step, learning_rate, param_groups
from clipkit.zeroshot.classes import read_class_tree

MAX_LOGIT_SCALE = math.log(100.0)
SCRATCH_LR, FINETUNE_LR = 5e-4, 1e-5


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``clipkit train`` was asked to do (None: chosen from the data and model)."""

    data: str
    out: str
    model: str
    epochs: int | None = None
    steps: int | None = None
    batch_size: int = 64
    lr: float | None = None
    weight_decay: float = 0.2
    warmup: int | None = None
    grad_clip: float | None = None
    weight: float = 0.5  # λ, the image→text share of the loss
    init_temperature: float | None = None
    learn_temperature: bool = True
    val_split: float = 0.1
    val: str | None = None
    eval_classes: str | None = None
    lock_image: bool = False
    lock_text: bool = False
    grad_cache: bool = False
    micro_batch: int = 64
    precision: str = "auto"
    device: str = "auto"
    seed: int = 0
    workers: int | None = None  # decode processes; None: one per core, at most 8
    save_every: int | None = None
    wise_ft: float | None = None
    image_column: str | None = None
    text_column: str | None = None
    resume: bool = False
    strict: bool = False  # raise SkippedInputsError, after the run, if any pair was skipped


@dataclass(frozen=True)
class TrainResult:
    """What a run did and where its artifacts are."""

    run_dir: str
    steps_done: int
    total_steps: int
    train_pairs: int
    val_pairs: int
    skipped: tuple[tuple[str, str, str], ...]
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
        InputError: unusable data or options, detected before the first step.
        ModelSpecError, WeightsUnavailableError, DeviceError: as ``load_model``.
    """
    _check_options(config)
    world = distributed.current_world()
    device, owns_group = distributed.start(world, config.device)
    try:
        result = _Run(config, world, device, progress or no_progress).run()
    finally:
        if owns_group:
            distributed.finish(world)
    if config.strict and result.skipped and result.is_main and not result.interrupted:
        listed_in = str(Path(result.run_dir) / store.FAILURES_FILE)
        raise SkippedInputsError(len(result.skipped), listed_in, result)
    return result


def _check_options(config: TrainConfig) -> None:
    if config.epochs is not None and config.steps is not None:
        raise UsageError("Give --epochs or --steps, not both.", "One sets the run's length.")
    if (config.epochs is not None and config.epochs < 1) or (
        config.steps is not None and config.steps < 1
    ):
        raise UsageError("--epochs and --steps must be at least 1.", "E.g. --epochs 10.")
    if not 0.0 <= config.weight <= 1.0:
        raise UsageError(f"--lambda must be in [0, 1], got {config.weight}.", "0.5 weighs both.")
    if config.init_temperature is not None and not 0.01 <= config.init_temperature <= 10:
        raise UsageError(
            f"--init-temperature {config.init_temperature} is outside [0.01, 10].",
            "CLIP starts at 0.07; 1/t is clamped at 100 during training.",
        )
    if config.lock_image and config.lock_text:
        raise UsageError(
            "--lock-image and --lock-text together leave nothing to train.",
            "Lock at most one tower.",
        )
    if config.wise_ft is not None and not 0.0 <= config.wise_ft <= 1.0:
        raise UsageError(
            f"--wise-ft must be in [0, 1], got {config.wise_ft}.",
            "0.5 averages the initial and fine-tuned weights.",
        )
    if config.micro_batch < 1:
        raise UsageError("--micro-batch must be at least 1.", "E.g. --micro-batch 64.")
    if config.lr is not None and not 0 < config.lr <= 1:  # also refuses NaN
        raise UsageError(
            f"--lr must be in (0, 1], got {config.lr}.",
            "AdamW: about 5e-4 from scratch, 1e-5 when fine-tuning.",
        )
    for option, value in (
        ("--weight-decay", config.weight_decay),
        ("--grad-clip", config.grad_clip),
    ):
        if value is not None and not 0 <= value < math.inf:
            raise UsageError(f"{option} must be a number >= 0, got {value}.", "E.g. 0.2 / 1.0.")


class _Run:
    """One training run's state; ``run()`` drives it from set-up to the final checkpoint."""

    def __init__(self, config: TrainConfig, world, device: str, progress: ProgressCallback) -> None:
        self.config, self.world, self.progress = config, world, progress
        self.workers = config.workers if config.workers is not None else default_workers()
        self.out = Path(config.out).expanduser()
        seed_everything(config.seed)
        self.encoder: Encoder = load_model(config.model, device=device, precision=config.precision)
        self.model = self.encoder.model
        self.device = self.encoder.device.value
        # Workers augment to uint8 pixels; _step normalises the batch on the device.
        self.augment = split_transform(self.encoder.train_transform())
        self.data = load_pairs(
            config.data,
            val_data=config.val,
            val_split=config.val_split,
            seed=config.seed,
            batch_size=config.batch_size,
            image_size=self.encoder.image_size[0],
            workers=self.workers,
            image_column=config.image_column,
            text_column=config.text_column,
        )
        self.classes = read_class_tree(config.eval_classes) if config.eval_classes else None
        total = config.steps or (config.epochs or 10) * (len(self.data.train) // config.batch_size)
        self.schedule = Schedule(len(self.data.train), config.batch_size, total)
        self.settings = self._settings()
        self.evaluations: list[Evaluation] = []
        self.paused = 0.0  # seconds spent evaluating and checkpointing, not training

    def _settings(self) -> dict[str, Any]:
        """Resolved values of the options left to clipkit, with the reasons."""
        from_scratch = self.encoder.weights.startswith("random")
        lr = self.config.lr or (SCRATCH_LR if from_scratch else FINETUNE_LR)
        warmup = self.config.warmup
        if warmup is None:
            warmup = max(1, round(0.05 * self.schedule.total_steps))
        return {
            "lr": lr,
            "lr_reason": "given"
            if self.config.lr
            else (
                "default for training from scratch" if from_scratch else "default for fine-tuning"
            ),
            "warmup": min(warmup, self.schedule.total_steps),
            "total_steps": self.schedule.total_steps,
            "steps_per_epoch": self.schedule.steps_per_epoch,
            "epochs": self.schedule.epochs,
            "train_pairs": len(self.data.train),
            "val_pairs": len(self.data.val),
            "skipped": len(self.data.skipped),
            "arch": self.encoder.arch,
            "weights": self.encoder.weights,
            "precision": self.encoder.precision.value,
            "world_size": self.world.size,
        }

    def run(self) -> TrainResult:
        # Held from the folder check to the last checkpoint: a second `clipkit train` (or a
        # second --resume) into this folder is refused rather than interleaving checkpoints.
        with writer_lock(
            self.out,
            f"train -o {self.out}",
            active=self.world.is_main,
            create=not self.config.resume,
        ):
            return self._train()

    def _train(self) -> TrainResult:
        saved = self._prepare_folder()
        self._prepare_model()
        optimizer = torch.optim.AdamW(
            param_groups(self.model, self.config.weight_decay),
            lr=self.settings["lr"],
            betas=(0.9, 0.98),
            eps=1e-6,
        )
        scaler = torch.amp.GradScaler("cuda") if self.encoder.precision.value == "fp16" else None
        self.scaler = scaler
        state = ResumeState(best_score=float("-inf"))
        if saved is not None:
            state = saved
            self.model.load_state_dict(state.model)
            optimizer.load_state_dict(state.optimizer)
            if scaler is not None and state.scaler:
                scaler.load_state_dict(state.scaler)
            restore_rng(state.rng)
        self.log = (
            MetricsLog(self.out / METRICS_FILE, state.step if saved else None)
            if self.world.is_main
            else None
        )
        if saved and self.log is not None:
            # A resumed (or finished) run reports every evaluation, not only the new ones.
            self.evaluations = [
                Evaluation.from_record(record)
                for record in self.log.read()
                if record.get("kind") == "eval"
            ]
        if state.finished:
            return self._result(state, None, already_finished=True)
        network = self._wrap_ddp()
        return self._loop(network, optimizer, scaler, state)

    def _prepare_folder(self) -> ResumeState | None:
        config = {k: v for k, v in dataclasses.asdict(self.config).items()}
        config["out"] = str(self.out)
        config["resolved"] = {k: v for k, v in self.settings.items() if k != "skipped"}
        saved = None
        if self.world.is_main:
            saved = prepare_run_folder(self.out, config, self.config.resume)
            _write_failures(self.out, self.data.skipped)
        distributed.barrier(self.world)
        resumable = self.config.resume and (self.out / STATE_FILE).is_file()
        if not self.world.is_main and resumable:
            saved = load_state(self.out / STATE_FILE)
        return saved

    def _prepare_model(self) -> None:
        model, config = self.model, self.config
        with torch.no_grad():
            if config.init_temperature is not None:
                model.logit_scale.fill_(math.log(1.0 / config.init_temperature))
        model.logit_scale.requires_grad_(config.learn_temperature)
        for name, parameter in model.named_parameters():
            image_side = name.startswith("visual.")
            if (config.lock_image and image_side) or (
                config.lock_text and not image_side and "logit_" not in name
            ):
                parameter.requires_grad_(False)
        model.train()

    def _wrap_ddp(self) -> torch.nn.Module:
        if not self.world.distributed:
            return self.model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.world.local_rank] if self.device.startswith("cuda") else None
        return DistributedDataParallel(self.model, device_ids=ids)

    def _loop(self, network, optimizer, scaler, state: ResumeState) -> TrainResult:
        config, schedule = self.config, self.schedule
        batches = SeededBatches(schedule, config.seed, state.step, self.world)
        loader = torch.utils.data.DataLoader(
            PairDataset(
                self.data.train, self.augment.pixels, config.seed, self.encoder.image_size[0]
            ),
            batch_sampler=batches,
            collate_fn=collate_pairs,
            num_workers=self.workers,
            worker_init_fn=decode_worker_init if self.workers else None,
            pin_memory=self.device.startswith("cuda"),
            # Its own generator: creating the iterator must not draw from the global stream,
            # or a resumed run's dropout would drift from the uninterrupted run's.
            generator=torch.Generator(),
        )
        dtype = autocast_dtype(self.encoder.precision.value)
        autocast = torch.autocast("cuda", dtype=dtype) if dtype else contextlib.nullcontext()
        stop = _StopFlag()
        started, samples, losses = time.perf_counter(), 0, None
        interrupted, rate, diverged = False, 0.0, None
        with stop:
            try:
                for pixels, captions, skips in start_workers(loader):
                    if skips:
                        self._note_skips(skips)
                    losses = self._step(
                        network, optimizer, scaler, pixels, captions, autocast, state.step
                    )
                    state.step += 1
                    samples += config.batch_size
                    busy = time.perf_counter() - started - self.paused  # not evaluation
                    rate = samples / max(busy, 1e-9)
                    self._after_step(state, losses, optimizer, rate)
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
        self._checkpoint(state, optimizer, scaler)
        if diverged is not None:
            raise self._diverged(diverged.loss, state)
        if not interrupted:
            self._finish()
        return self._result(state, losses, interrupted=interrupted, rate=rate)

    def _step(self, network, optimizer, scaler, pixels, captions, autocast, step):
        config = self.config
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(
                step, self.settings["lr"], self.settings["warmup"], self.schedule.total_steps
            )
        optimizer.zero_grad(set_to_none=True)
        pixels = pixels.to(self.device, non_blocking=True)
        if pixels.dtype == torch.uint8:
            pixels = self.augment.normalize(pixels)
        tokens = self.encoder.tokenize(captions).to(self.device, non_blocking=True)
        common = {
            "weight": config.weight,
            "world": self.world,
            "autocast": autocast,
            "scaler": scaler,
        }
        if config.grad_cache:
            losses = grad_cache_step(
                network, pixels, tokens, micro_batch=config.micro_batch, **common
            )
        else:
            losses = full_batch_step(network, pixels, tokens, **common)
        if not math.isfinite(losses.loss):
            raise _NonFiniteLoss(losses.loss)  # before the optimizer touches the weights
        if scaler is not None:
            scaler.unscale_(optimizer)
        if config.grad_clip:
            trainable = [p for p in self.model.parameters() if p.requires_grad]
            torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)  # as open_clip: 1/t <= 100
        return losses

    def _diverged(self, loss: float, state: ResumeState) -> DivergedError:
        precision = self.encoder.precision.value
        fixes = [f"a lower --lr (this run: {self.settings['lr']:g})"]
        if precision == "fp16":
            fixes.append("--precision bf16 or fp32 (fp16 overflows more easily)")
        return DivergedError(
            f"The training loss became {loss} at step {state.step + 1}, so training stopped "
            f"there. The weights of step {state.step}, before it, are saved in {self.out}.",
            f"Start a new run with {' or '.join(fixes)}; -m {self.out / LAST_FILE} continues "
            "from the saved weights.",
        )

    def _after_step(self, state, losses, optimizer, rate) -> None:
        schedule, step = self.schedule, state.step
        if self.log is not None:
            self.log.write(
                {
                    "kind": "step",
                    "step": step,
                    "epoch": (step - 1) // schedule.steps_per_epoch,
                    "loss": losses.loss,
                    "loss_image_to_text": losses.image_to_text,
                    "loss_text_to_image": losses.text_to_image,
                    "temperature": losses.temperature,
                    "lr": optimizer.param_groups[0]["lr"],
                    "samples_per_s": rate,
                }
            )
        end_of_epoch = step % schedule.steps_per_epoch == 0 or step == schedule.total_steps
        paused = time.perf_counter()
        if end_of_epoch:
            self._evaluate(state)
        if end_of_epoch or (self.config.save_every and step % self.config.save_every == 0):
            self._checkpoint(state, optimizer, self.scaler)
        self.paused += time.perf_counter() - paused
        figures = {"loss": losses.loss, "temperature": losses.temperature, "samples_per_s": rate}
        self.progress(ProgressReport("train", step, schedule.total_steps, figures))

    def _evaluate(self, state: ResumeState) -> None:
        if not self.data.val or not self.world.is_main:
            distributed.barrier(self.world)
            return
        self.progress(ProgressReport("evaluate", 0, 1, {}))
        self.model.eval()
        result = evaluate(
            self.encoder,
            self.data.val,
            weight=self.config.weight,
            logit_scale=self.model.logit_scale,
            classes=self.classes,
            workers=min(self.workers, 2),
        )
        self.model.train()
        self.evaluations.append(result)
        assert self.log is not None  # the main rank holds the log
        self.log.write(
            {
                "kind": "eval",
                "step": state.step,
                "epoch": self.schedule.epoch_of(state.step - 1),
                **result.as_dict(),
            }
        )
        if result.score > state.best_score:
            state.best_score = result.score
            save_model(self.out, BEST_FILE, self.model.state_dict(), self._meta(state, "best"))
        self.progress(
            ProgressReport("evaluate", 1, 1, {"val_loss": result.loss, "val_recall": result.score})
        )
        distributed.barrier(self.world)

    def _checkpoint(self, state: ResumeState, optimizer, scaler) -> None:
        if not self.world.is_main:
            return
        save_model(self.out, LAST_FILE, self.model.state_dict(), self._meta(state, "last"))
        state.model = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        state.optimizer = optimizer.state_dict()
        if scaler is not None:
            state.scaler = scaler.state_dict()
        state.rng = capture_rng()
        save_state(self.out, state)
        state.model = {}

    def _meta(self, state: ResumeState, which: str):
        return self.encoder.checkpoint_meta(
            step=str(state.step),
            checkpoint=which,
            run=str(self.out),
            trained_from=self.config.model,
        )

    def _note_skips(self, skips) -> None:
        self.data = dataclasses.replace(self.data, skipped=self.data.skipped + tuple(skips))
        if self.world.is_main:
            _write_failures(self.out, self.data.skipped)

    def _finish(self) -> None:
        if not self.world.is_main:
            return
        from clipkit.report.plots import plot_training

        assert self.log is not None  # the main rank holds the log
        plot_training(self.log.read(), self.out / PLOT_FILE)
        if self.config.wise_ft is not None:
            self._write_wise_ft(self.config.wise_ft)

    def _write_wise_ft(self, alpha: float) -> None:
        initial = load_model(self.config.model, device="cpu").model.state_dict()
        tuned = self.model.state_dict()
        merged = {
            name: (1 - alpha) * initial[name].float() + alpha * tensor.detach().cpu().float()
            if tensor.is_floating_point()
            else tensor.detach().cpu()
            for name, tensor in tuned.items()
        }
        meta = self.encoder.checkpoint_meta(
            checkpoint="wise-ft", alpha=str(alpha), trained_from=self.config.model
        )
        save_model(self.out, wise_ft_name(alpha), merged, meta)

    def _result(self, state, losses, *, already_finished=False, interrupted=False, rate=0.0):
        out = self.out
        wise = out / wise_ft_name(self.config.wise_ft) if self.config.wise_ft is not None else None
        return TrainResult(
            run_dir=str(out),
            steps_done=state.step,
            total_steps=self.schedule.total_steps,
            train_pairs=len(self.data.train),
            val_pairs=len(self.data.val),
            skipped=self.data.skipped,
            last_loss=losses.loss if losses else None,
            evaluations=tuple(self.evaluations),
            best_checkpoint=_existing(out / BEST_FILE),
            last_checkpoint=_existing(out / LAST_FILE),
            wise_ft_checkpoint=_existing(wise) if wise else None,
            plot=_existing(out / PLOT_FILE),
            settings=self.settings,
            already_finished=already_finished,
            interrupted=interrupted,
            samples_per_second=rate,
            is_main=self.world.is_main,
        )


def wise_ft_name(alpha: float) -> str:
    return f"wise-ft-{alpha:g}.safetensors"


def _existing(path: Path) -> str | None:
    return str(path) if path.is_file() else None


def _write_failures(out: Path, skipped) -> None:
    store.write_failures(out, skipped)


class _StopFlag:
    """Ctrl-C during the loop finishes the current step, then stops and saves; twice: at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None  # the SIGINT handler to restore

    def __enter__(self) -> _StopFlag:
        with contextlib.suppress(ValueError):  # not the main thread: keep default handling
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


class _NonFiniteLoss(Exception):
    def __init__(self, loss: float) -> None:
        super().__init__(loss)
        self.loss = loss
