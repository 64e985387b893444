"""What a training run decides before its first step: the options, the model, the verified
pairs, the schedule and the resolved settings. Every other part of the run reads it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipkit.errors import UsageError
from clipkit.infra.device import seed_everything
from clipkit.infra.distributed import World
from clipkit.infra.progress import ProgressCallback
from clipkit.inputs.classes import ClassTree, read_class_tree
from clipkit.inputs.pipeline import default_workers
from clipkit.models.openclip import Encoder, load_model
from clipkit.models.pixels import SplitTransform, split_transform
from clipkit.train.config import (
    DEFAULT_EPOCHS,
    DEFAULT_MOMENTUM,
    DEFAULT_SSL_WEIGHT,
    FINETUNE_LR,
    SCRATCH_LR,
    WARMUP_SHARE,
    TrainConfig,
)
from clipkit.train.data import Schedule, TrainPairs, load_pairs


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
    assert config.given_spec is not None  # train's model is required: parsed by preflight
    encoder = load_model(config.given_spec, device=device, precision=config.precision)
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
    _check_masking(config, encoder, schedule)
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
    loss, loss_reason = _objective(config, encoder)
    uses_momentum = bool(config.queue) or config.image_ssl == "byol"
    warmup = config.warmup
    if warmup is None:
        warmup = max(1, round(WARMUP_SHARE * schedule.total_steps))
    return {
        "lr": lr,
        "lr_reason": lr_reason,
        "loss": loss,
        "loss_reason": loss_reason,
        "momentum": _given_or(config.momentum, DEFAULT_MOMENTUM) if uses_momentum else None,
        "ssl_weight": _given_or(config.ssl_weight, DEFAULT_SSL_WEIGHT)
        if config.image_ssl
        else None,
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


def _given_or(value: float | None, default: float) -> float:
    return default if value is None else value


def _objective(config: TrainConfig, encoder: Encoder) -> tuple[str, str]:
    """The loss to train with, and why: as given, else SigLIP's for a model trained with it
    (one with a logit bias: softmax InfoNCE would leave the bias untrained and meaningless)."""
    if config.loss is not None:
        return config.loss, "given"
    if encoder.logit_bias is not None:
        if config.queue:
            raise UsageError(
                f"{encoder.spec} was trained with SigLIP's loss, which clipkit would continue "
                "with, and --queue adds negatives to InfoNCE's softmax denominators.",
                "Add --loss clip to train it with InfoNCE and the queue, or drop --queue.",
            )
        return "siglip", "the model has a logit bias (SigLIP)"
    return "clip", "the default"


def _check_masking(config: TrainConfig, encoder: Encoder, schedule: Schedule) -> None:
    """--mask-ratio needs a tower with patches, and --unmasked-epochs a masked epoch."""
    if config.mask_ratio and not encoder.drops_patches:
        raise UsageError(
            f"--mask-ratio drops image patches, and the image tower of {encoder.spec} "
            "(a ResNet or a timm model) has none.",
            "Use a ViT model, or drop --mask-ratio.",
        )
    if config.unmasked_epochs >= schedule.epochs and config.mask_ratio:
        raise UsageError(
            f"--unmasked-epochs {config.unmasked_epochs} leaves none of the run's "
            f"{schedule.epochs} epochs masked.",
            f"Use at most --unmasked-epochs {schedule.epochs - 1}.",
        )


def mask_ratio_at(config: TrainConfig, schedule: Schedule, step: int) -> float:
    """The share of patches dropped at ``step``: --mask-ratio, but 0 in the last
    --unmasked-epochs epochs (FLIP's unmasked tuning)."""
    masked_epochs = schedule.epochs - config.unmasked_epochs
    return config.mask_ratio if schedule.epoch_of(step) < masked_epochs else 0.0
