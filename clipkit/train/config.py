"""What ``clipkit train`` is asked to do, and the checks that need no model.

Light on purpose (no torch): ``clipkit train`` runs :func:`preflight` before it imports the
training machinery, so a mistyped path, a missing column, an option out of range or a spec
that cannot parse is reported in a fraction of a second instead of after torch's 5 s. The CLI
imports this module to build ``clipkit --help`` (its defaults are the options' defaults), so
even NumPy and Pillow wait until :func:`preflight` reads the data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from clipkit.config import IMAGE_SSL_METHODS, LOSSES, ComputePrecision, ImageSSL, Loss
from clipkit.errors import InputError, UsageError
from clipkit.infra.atomic import check_output
from clipkit.infra.fields import check_config
from clipkit.models.specs import ChoosesAModel

# Defaults chosen from the data and model when an option is left out (the CLI's help shows them).
DEFAULT_EPOCHS = 10
SCRATCH_LR, FINETUNE_LR = 5e-4, 1e-5  # AdamW's peak rate from random weights, and fine-tuning
WARMUP_SHARE = 0.05  # of the run's steps, linear
DEFAULT_MOMENTUM = 0.995  # ALBEF's; MoCo uses 0.999 over far longer runs
DEFAULT_SSL_WEIGHT = 1.0  # SLIP's weight of its SimCLR term


@dataclass(frozen=True)
class TrainConfig(ChoosesAModel):
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
    loss: Loss | None = None  # None: siglip when the model has a logit bias, else clip
    weight: float = 0.5  # λ, the image→text share of the loss
    mask_ratio: float = 0.0  # FLIP: share of image patches dropped while training
    unmasked_epochs: int = 0  # the last epochs train with every patch
    queue: int = 0  # MoCo/ALBEF: queued keys of each modality; 0: none
    momentum: float | None = None  # the momentum encoders' EMA factor; None: DEFAULT_MOMENTUM
    image_ssl: ImageSSL | None = None
    ssl_weight: float | None = None  # W of L_image_text + W·L_ssl; None: 1.0
    init_temperature: float | None = None
    learn_temperature: bool = True
    val_split: float = 0.1
    val: str | None = None
    eval_classes: str | None = None
    lock_image: bool = False
    lock_text: bool = False
    grad_cache: bool = False
    micro_batch: int = 64
    precision: ComputePrecision = "auto"
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


def preflight(config: TrainConfig) -> None:
    """Refuse what is wrong before any heavy import: options, the model spec's syntax, the
    data, validation and class-tree paths, and a table's columns.

    Raises:
        UsageError: options that contradict each other or lie outside their range.
        InputError: an output folder that is a file.
        ModelSpecError: a model spec that cannot parse.
        InputError: a path that does not exist or a table without its columns.
    """
    from clipkit.inputs.pairs import check_pair_source  # NumPy and Pillow: see the docstring

    _check_options(config)
    check_output(config.out, folder=True)
    config.given_spec  # noqa: B018 - parsed once, before any heavy import: a typo fails here
    columns = {"image_column": config.image_column, "text_column": config.text_column}
    check_pair_source(config.data, **columns)
    if config.val is not None:
        check_pair_source(config.val, **columns)
    if config.eval_classes is not None and not Path(config.eval_classes).expanduser().is_dir():
        raise InputError(
            f"--eval-classes {config.eval_classes} is not a folder.",
            "Pass a class tree: ROOT/<label>/<images>.",
        )


def _check_options(config: TrainConfig) -> None:
    if config.epochs is not None and config.steps is not None:
        raise UsageError("Give --epochs or --steps, not both.", "One sets the run's length.")
    if (config.epochs is not None and config.epochs < 1) or (
        config.steps is not None and config.steps < 1
    ):
        raise UsageError("--epochs and --steps must be at least 1.", "E.g. --epochs 10.")
    if config.loss not in (None, *LOSSES):
        raise UsageError(f"--loss must be one of {', '.join(LOSSES)}, got {config.loss!r}.", "")
    if config.loss == "siglip" and config.weight != 0.5:
        raise UsageError(
            "--lambda weighs InfoNCE's two directions; SigLIP's loss has none.",
            "Drop --lambda, or use --loss clip.",
        )
    if not 0.0 <= config.mask_ratio < 1.0:  # also refuses NaN
        raise UsageError(
            f"--mask-ratio must be in [0, 1), got {config.mask_ratio}.",
            "FLIP drops 0.5 to 0.75 of the patches; 0 drops none.",
        )
    if config.unmasked_epochs < 0:
        raise UsageError(f"--unmasked-epochs must be >= 0, got {config.unmasked_epochs}.", "")
    if config.unmasked_epochs and not config.mask_ratio:
        raise UsageError(
            "--unmasked-epochs ends a masked run without masking; no --mask-ratio was given.",
            "Add --mask-ratio 0.5, or drop --unmasked-epochs.",
        )
    _check_queue_and_ssl(config)
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
            f"AdamW: about {SCRATCH_LR:g} from scratch, {FINETUNE_LR:g} when fine-tuning.",
        )
    for option, value in (
        ("--weight-decay", config.weight_decay),
        ("--grad-clip", config.grad_clip),
    ):
        if value is not None and not 0 <= value < math.inf:
            raise UsageError(f"{option} must be a number >= 0, got {value}.", "E.g. 0.2 / 1.0.")
    if not 0.0 <= config.val_split < 1.0:
        raise UsageError(f"--val-split must be in [0, 1), got {config.val_split}.", "E.g. 0.1.")


def _check_queue_and_ssl(config: TrainConfig) -> None:
    """--queue and --momentum, --image-ssl and --ssl-weight: ranges and combinations."""
    if config.queue < 0:
        raise UsageError(f"--queue must be >= 0, got {config.queue}.", "E.g. --queue 4096.")
    if config.queue % config.batch_size:
        below = config.queue // config.batch_size * config.batch_size
        choices = " or ".join(str(k) for k in sorted({max(below, config.batch_size),
                                                       below + config.batch_size}))  # fmt: skip
        raise UsageError(
            f"--queue {config.queue} is not a multiple of the batch size {config.batch_size}.",
            f"Use --queue {choices}: each step replaces one batch of keys, so every key "
            "then stays in the queue the same number of steps.",
        )
    if config.queue and config.loss == "siglip":
        raise UsageError(
            "--queue adds negatives to InfoNCE's softmax denominators; SigLIP's loss has none.",
            "Use --loss clip with --queue.",
        )
    uses_momentum = bool(config.queue) or config.image_ssl == "byol"
    if config.momentum is not None and not uses_momentum:
        raise UsageError(
            "--momentum sets the momentum encoders of --queue and --image-ssl byol; "
            "neither was given.",
            "Add --queue 4096, or drop --momentum.",
        )
    if config.momentum is not None and not 0.0 <= config.momentum <= 1.0:  # also NaN
        raise UsageError(
            f"--momentum must be in [0, 1], got {config.momentum}.",
            f"{DEFAULT_MOMENTUM} (the default) moves the momentum encoders slowly; "
            "0 copies the trained weights each step.",
        )
    if config.image_ssl not in (None, *IMAGE_SSL_METHODS):
        raise UsageError(
            f"--image-ssl must be one of {', '.join(IMAGE_SSL_METHODS)}, got {config.image_ssl!r}.",
            "SLIP's choice is simclr.",
        )
    if config.ssl_weight is not None and config.image_ssl is None:
        raise UsageError("--ssl-weight weighs --image-ssl's term; no --image-ssl was given.",
                         "Add --image-ssl simclr, or drop --ssl-weight.")  # fmt: skip
    if config.ssl_weight is not None and not 0 <= config.ssl_weight < math.inf:
        raise UsageError(f"--ssl-weight must be a number >= 0, got {config.ssl_weight}.",
                         f"SLIP weighs its SimCLR term {DEFAULT_SSL_WEIGHT}.")  # fmt: skip
    if config.image_ssl and config.lock_image:
        raise UsageError(
            f"--image-ssl {config.image_ssl} trains the image tower, which --lock-image freezes.",
            "Drop one of them.",
        )
