"""What a training run decides before its first step: the options, the model, the verified
pairs, the schedule and the resolved settings. Every other part of the run reads it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipkit.infra.device import seed_everything
from clipkit.infra.distributed import World
from clipkit.infra.fields import check_config
from clipkit.infra.progress import ProgressCallback
from clipkit.inputs.pipeline import default_workers
from clipkit.models.openclip import Encoder, load_model
from clipkit.models.pixels import SplitTransform, split_transform
from clipkit.train.data import Schedule, TrainPairs, load_pairs
from clipkit.zeroshot.classes import ClassTree, read_class_tree

SCRATCH_LR, FINETUNE_LR = 5e-4, 1e-5
DEFAULT_EPOCHS = 10


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

    def __post_init__(self) -> None:
        check_config(self)  # str or Path for paths; a wrong type fails here, by name


@dataclass(frozen=True)
class Session:
    """One run's fixed inputs. ``model`` is ``encoder.model``, the module that trains."""

    config: TrainConfig
    world: World
    out: Path
    encoder: Encoder
    workers: int
    augment: SplitTransform  # workers apply ``pixels``; the loop normalises on the device
    data: TrainPairs
    classes: ClassTree | None
    schedule: Schedule
    settings: dict[str, Any]  # the options clipkit resolved, with the reasons
    progress: ProgressCallback

    @property
    def model(self) -> Any:
        return self.encoder.model

    @property
    def device(self) -> str:
        return self.encoder.device.value


def open_session(
    config: TrainConfig, world: World, device: str, progress: ProgressCallback
) -> Session:
    """Seed, load the model, read and verify the pairs, and fix the schedule.

    The order matters for a bit-exact resume: the seed comes before the model's random
    initialisation, and the pair split draws from the config's seed only.
    """
    workers = config.workers if config.workers is not None else default_workers()
    seed_everything(config.seed)
    encoder = load_model(config.model, device=device, precision=config.precision)
    augment = split_transform(encoder.train_transform())
    data = load_pairs(
        config.data,
        val_data=config.val,
        val_split=config.val_split,
        seed=config.seed,
        batch_size=config.batch_size,
        image_size=encoder.image_size[0],
        workers=workers,
        image_column=config.image_column,
        text_column=config.text_column,
    )
    classes = read_class_tree(config.eval_classes) if config.eval_classes else None
    steps = config.steps or (config.epochs or DEFAULT_EPOCHS) * (
        len(data.train) // config.batch_size
    )
    schedule = Schedule(len(data.train), config.batch_size, steps)
    return Session(
        config=config,
        world=world,
        out=Path(config.out).expanduser(),
        encoder=encoder,
        workers=workers,
        augment=augment,
        data=data,
        classes=classes,
        schedule=schedule,
        settings=_resolved_settings(config, encoder, data, schedule, world),
        progress=progress,
    )


def _resolved_settings(
    config: TrainConfig, encoder: Encoder, data: TrainPairs, schedule: Schedule, world: World
) -> dict[str, Any]:
    """Resolved values of the options left to clipkit, with the reasons."""
    from_scratch = encoder.weights.startswith("random")
    lr = config.lr or (SCRATCH_LR if from_scratch else FINETUNE_LR)
    if config.lr:
        lr_reason = "given"
    else:
        lr_reason = (
            "default for training from scratch" if from_scratch else "default for fine-tuning"
        )
    warmup = config.warmup
    if warmup is None:
        warmup = max(1, round(0.05 * schedule.total_steps))
    return {
        "lr": lr,
        "lr_reason": lr_reason,
        "warmup": min(warmup, schedule.total_steps),
        "total_steps": schedule.total_steps,
        "steps_per_epoch": schedule.steps_per_epoch,
        "epochs": schedule.epochs,
        "train_pairs": len(data.train),
        "val_pairs": len(data.val),
        "skipped": len(data.skipped),
        "arch": encoder.arch,
        "weights": encoder.weights,
        "precision": encoder.precision.value,
        "world_size": world.size,
    }
