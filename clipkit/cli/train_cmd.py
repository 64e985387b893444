"""``clipkit train``: fine-tune or train a CLIP model on image-caption pairs."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any

import typer

from clipkit.cli.app import app, handles_errors
from clipkit.cli.console import stderr
from clipkit.cli.options import DeviceOption, ModelOption, StrictOption, WorkersOption
from clipkit.cli.render import print_skipped, run_bulk
from clipkit.config import DEFAULT_MODEL_SPEC, ComputePrecision, ImageSSL, Loss
from clipkit.train.config import (
    DEFAULT_EPOCHS,
    DEFAULT_MOMENTUM,
    DEFAULT_SSL_WEIGHT,
    FINETUNE_LR,
    SCRATCH_LR,
    WARMUP_SHARE,
    TrainConfig,
)

# Each option's default is the config's: one value, in TrainConfig.
DEFAULT: dict[str, Any] = {field.name: field.default for field in fields(TrainConfig)}


@app.command()
@handles_errors
def train(
    data: Annotated[
        Path,
        typer.Argument(
            help="Folder of images with .txt captions, a CSV/TSV/JSONL/Parquet "
            "table, or WebDataset .tar shards (a .tar or a folder of them)."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder (checkpoints, logs).")],
    model: ModelOption = DEFAULT_MODEL_SPEC,
    epochs: Annotated[
        int | None,
        typer.Option(min=1, help="Passes over the data.", show_default=str(DEFAULT_EPOCHS)),
    ] = None,
    steps: Annotated[
        int | None, typer.Option(min=1, help="Optimiser steps (not --epochs).")
    ] = None,
    batch_size: Annotated[
        int,
        typer.Option(min=2, help="Global contrastive batch."),
    ] = DEFAULT["batch_size"],
    lr: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            help="Peak learning rate.",
            show_default=f"{SCRATCH_LR:g} from scratch, {FINETUNE_LR:g} fine-tuning",
        ),
    ] = None,
    weight_decay: Annotated[
        float,
        typer.Option(min=0.0, help="AdamW decay (matrices)."),
    ] = DEFAULT["weight_decay"],
    warmup: Annotated[
        int | None,
        typer.Option(
            min=0, help="Linear warmup steps.", show_default=f"{WARMUP_SHARE:.0%} of the run"
        ),
    ] = None,
    grad_clip: Annotated[float | None, typer.Option(min=0.0, help="Clip grad norm.")] = None,
    loss: Annotated[
        Loss | None,
        typer.Option(
            help="clip: softmax InfoNCE both ways; siglip: a sigmoid per pair.",
            show_default="siglip for a model with a logit bias, else clip",
        ),
    ] = None,
    weight: Annotated[
        float, typer.Option("--lambda", help="Weight λ of the image→text loss (0..1).")
    ] = DEFAULT["weight"],
    mask_ratio: Annotated[
        float,
        typer.Option(help="Share of image patches dropped while training (FLIP, ViT only)."),
    ] = DEFAULT["mask_ratio"],
    unmasked_epochs: Annotated[
        int, typer.Option(help="Last epochs trained with every patch (after --mask-ratio).")
    ] = DEFAULT["unmasked_epochs"],
    queue: Annotated[
        int, typer.Option(min=0, help="Queued negatives per modality (MoCo/ALBEF); 0: none.")
    ] = DEFAULT["queue"],
    momentum: Annotated[
        float | None,
        typer.Option(
            help="EMA of the momentum encoders (0..1).", show_default=str(DEFAULT_MOMENTUM)
        ),
    ] = None,
    image_ssl: Annotated[
        ImageSSL | None, typer.Option(help="Image self-supervision on two views (SLIP).")
    ] = None,
    ssl_weight: Annotated[
        float | None,
        typer.Option(
            help="W of loss + W·SSL loss.", show_default=f"{DEFAULT_SSL_WEIGHT} with --image-ssl"
        ),
    ] = None,
    init_temperature: Annotated[
        float | None, typer.Option(help="Start temperature t.", show_default="the model's own")
    ] = None,
    learn_temperature: Annotated[
        bool,
        typer.Option("--learn-temperature/--fixed-temperature", help="Train the temperature."),
    ] = DEFAULT["learn_temperature"],
    val_split: Annotated[
        float,
        typer.Option(help="Share of images held out."),
    ] = DEFAULT["val_split"],
    val: Annotated[Path | None, typer.Option(help="Validation pairs (instead of a split).")] = None,
    eval_classes: Annotated[
        Path | None, typer.Option(help="Class-per-subfolder images: report zero-shot top-1.")
    ] = None,
    lock_image: Annotated[
        bool,
        typer.Option(help="Freeze the image tower (LiT)."),
    ] = DEFAULT["lock_image"],
    lock_text: Annotated[bool, typer.Option(help="Freeze the text tower.")] = DEFAULT["lock_text"],
    grad_cache: Annotated[
        bool, typer.Option(help="GradCache: batches larger than memory, same gradient.")
    ] = DEFAULT["grad_cache"],
    micro_batch: Annotated[
        int, typer.Option(min=1, help="Pairs per forward pass with --grad-cache.")
    ] = DEFAULT["micro_batch"],
    precision: Annotated[
        ComputePrecision, typer.Option(help="Compute precision: bf16 and fp16 autocast on CUDA.")
    ] = DEFAULT["precision"],
    device: DeviceOption = DEFAULT["device"],
    seed: Annotated[
        int,
        typer.Option(help="Seed for order, captions and augmentation."),
    ] = DEFAULT["seed"],
    workers: WorkersOption = None,
    save_every: Annotated[
        int | None, typer.Option(min=1, help="Also checkpoint every N steps.")
    ] = None,
    wise_ft: Annotated[
        float | None,
        typer.Option(help="Also write initial·(1-α) + tuned·α weights (WiSE-FT)."),
    ] = None,
    image_column: Annotated[str | None, typer.Option(help="Table column of image paths.")] = None,
    text_column: Annotated[str | None, typer.Option(help="Table column of captions.")] = None,
    resume: Annotated[
        bool,
        typer.Option(help="Continue the run in --out exactly."),
    ] = DEFAULT["resume"],
    strict: StrictOption = DEFAULT["strict"],
) -> None:
    """Fine-tune a model with CLIP's contrastive loss or SigLIP's.

    Example: clipkit train pairs/ -o runs/shapes -m clipkit-tiny:random --epochs 5
    """
    given = dict(locals())  # the parameters, named as TrainConfig's fields
    from clipkit.train.config import preflight

    config = TrainConfig(**{field.name: given[field.name] for field in fields(TrainConfig)})
    preflight(config)  # before torch: a mistake here is reported in a blink
    from clipkit.train.run import train as run_train

    result = run_bulk(run_train, config, _report)
    if not result.is_main:  # another rank of a torchrun job: rank 0 reports for all
        return
    _report(result)
    if result.interrupted:
        raise typer.Exit(130)


def _report(result: Any) -> None:
    say = lambda text: stderr.print(text, markup=False)  # noqa: E731
    if result.already_finished:
        say(f"Run {result.run_dir} already finished ({result.steps_done} steps); nothing to do.")
        return
    from clipkit.store import FAILURES_FILE

    print_skipped(result.skipped, str(Path(result.run_dir) / FAILURES_FILE))
    for number, evaluation in enumerate(result.evaluations, start=1):
        zeroshot = evaluation.zeroshot_top1
        say(
            f"  eval {number}: loss {evaluation.loss:.3f}, image→text R@1/5/10 "
            f"{_recalls(evaluation, 'image_to_text')}, text→image R@1/5/10 "
            f"{_recalls(evaluation, 'text_to_image')}"
            + (f", zero-shot top-1 {zeroshot:.1%}" if zeroshot is not None else "")
        )
    settings = result.settings
    verb = "Stopped" if result.interrupted else "Trained"
    say(
        f"{verb} at step {result.steps_done}/{result.total_steps} on {result.train_pairs} pairs "
        f"({result.val_pairs} validation, {len(result.skipped)} skipped), lr {settings['lr']:g} "
        f"({settings['lr_reason']}), "
        + (f"loss {settings['loss']} ({settings['loss_reason']}), " if "loss" in settings else "")
        + f"{result.samples_per_second:.1f} samples/s -> {result.run_dir}"
    )
    if result.interrupted:
        say("State saved; continue with the same command and --resume.")
    for label, path in (
        ("best", result.best_checkpoint),
        ("last", result.last_checkpoint),
        ("wise-ft", result.wise_ft_checkpoint),
        ("plot", result.plot),
    ):
        if path:
            say(f"  {label}: {path}")


def _recalls(evaluation: Any, direction: str) -> str:
    values = [getattr(evaluation, f"{direction}_r{k}") for k in (1, 5, 10)]
    return "/".join(f"{100 * v:.0f}" for v in values) + "%"
