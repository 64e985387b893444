"""``clipkit train`` on the command line: options reach the service, results and errors are
reported, Ctrl-C exits 130 with the state saved."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from clipkit import cli
from clipkit.inputs.synthetic import write_captioned_shapes
from clipkit.train import run as train_module
from clipkit.train.evaluation import Evaluation
from tests.helpers import TINY

runner = CliRunner()


def _result(**changes):
    base = dict(
        run_dir="runs/x",
        steps_done=10,
        total_steps=10,
        train_pairs=90,
        val_pairs=10,
        skipped=(("bad.jpg", "decode", "truncated"),),
        last_loss=1.0,
        evaluations=(Evaluation(10, 2.0, 0.1, 0.5, 0.8, 0.2, 0.6, 0.9, 3.0, 2.5, 0.75),),
        best_checkpoint="runs/x/best.safetensors",
        last_checkpoint="runs/x/last.safetensors",
        wise_ft_checkpoint=None,
        plot="runs/x/training.png",
        settings={"lr": 5e-4, "lr_reason": "default for training from scratch"},
    )
    return train_module.TrainResult(**{**base, **changes})


@pytest.fixture
def in_data_folder(tmp_path, monkeypatch):
    """The paths the wiring tests name exist: the CLI checks them before the service runs."""
    monkeypatch.chdir(tmp_path)
    for table in ("pairs.csv", "val.csv"):
        (tmp_path / table).write_text("image,caption\na.png,a cat\n")
    (tmp_path / "classes").mkdir()
    (tmp_path / "d").mkdir()


def test_options_reach_the_service(monkeypatch, in_data_folder):
    seen = {}

    def fake_train(config, progress=None):
        seen["config"] = config
        return _result()

    monkeypatch.setattr(train_module, "train", fake_train)
    result = runner.invoke(
        cli.app,
        [
            "train",
            "pairs.csv",
            "-o",
            "runs/x",
            "-m",
            TINY,
            "--steps",
            "7",
            "--batch-size",
            "32",
            "--lr",
            "1e-4",
            "--lambda",
            "0.7",
            "--init-temperature",
            "0.05",
            "--fixed-temperature",
            "--lock-image",
            "--grad-cache",
            "--micro-batch",
            "8",
            "--val",
            "val.csv",
            "--eval-classes",
            "classes/",
            "--wise-ft",
            "0.5",
            "--resume",
            "--grad-clip",
            "1.0",
            "--seed",
            "4",
        ],
    )
    assert result.exit_code == 0, result.stderr
    config = seen["config"]
    assert (config.data, config.out, config.steps, config.batch_size) == (
        "pairs.csv",
        "runs/x",
        7,
        32,
    )
    assert (config.lr, config.weight, config.init_temperature) == (1e-4, 0.7, 0.05)
    assert not config.learn_temperature and config.lock_image and not config.lock_text
    assert config.grad_cache and config.micro_batch == 8 and config.resume
    # typed as paths: "classes/" names the folder "classes"
    assert (config.val, config.eval_classes, config.wise_ft) == ("val.csv", "classes", 0.5)
    assert (config.grad_clip, config.seed) == (1.0, 4)
    assert "zero-shot top-1 75.0%" in result.stderr
    assert "R@1/5/10 10/50/80%" in result.stderr
    assert "skipped bad.jpg: decode: truncated" in result.stderr
    assert "best: runs/x/best.safetensors" in result.stderr


def test_interrupted_run_exits_130_and_says_how_to_resume(monkeypatch, in_data_folder):
    monkeypatch.setattr(
        train_module, "train", lambda c, progress=None: _result(interrupted=True, steps_done=4)
    )
    result = runner.invoke(cli.app, ["train", "d", "-o", "r", "-m", TINY])
    assert result.exit_code == 130
    assert "Stopped at step 4/10" in result.stderr and "--resume" in result.stderr


@pytest.mark.parametrize(
    ("extra", "message", "code"),
    [
        # options that cannot work together or lie outside their range: usage errors, exit 2
        (["--epochs", "2", "--steps", "3"], "not both", 2),
        (["--lambda", "1.5"], "--lambda must be in [0, 1]", 2),
        (["--lock-image", "--lock-text"], "leave nothing to train", 2),
        (["--lr", "0"], "--lr must be in (0, 1], got 0.0", 2),  # used to mean "the default"
        (["--lr", "1e38"], "--lr must be in (0, 1], got 1e+38", 2),  # used to overflow in AdamW
        (["--weight-decay", "inf"], "--weight-decay must be a number >= 0, got inf", 2),
        # an option that does not fit this data: an input error, exit 1
        (["--batch-size", "64"], "--batch-size 64 is larger than the 10 training pairs", 1),
    ],
)
def test_bad_options_are_errors_with_hints(tmp_path, extra, message, code):
    write_captioned_shapes(tmp_path / "data", 10)
    options = ["-o", str(tmp_path / "r"), "-m", TINY, "--val-split", "0"]
    result = runner.invoke(cli.app, ["train", str(tmp_path / "data"), *options, *extra])
    assert result.exit_code == code
    assert "Error:" in result.stderr and message in result.stderr.replace("\n", " ")
    assert "Hint:" in result.stderr and "Traceback" not in result.stderr


def test_a_short_run_says_so_before_training_with_what_to_change(shapes, tmp_path):
    """#25 item 5: ten epochs of 180 pairs at batch 64 is 20 steps and trained to R@1 0.25,
    with nothing said; the progress line now shows the epoch beside the step count."""
    from clipkit.train.data import Schedule
    from clipkit.train.run import short_run_note

    note = short_run_note(Schedule(pairs=180, batch_size=64, total_steps=20))
    assert note.startswith(
        "this run takes only 20 optimiser steps (10 epochs of 2 steps: 180 pairs at batch 64)"
    )
    assert "use --epochs 100, or a smaller batch (--batch-size 32)" in note
    assert short_run_note(Schedule(pairs=180, batch_size=32, total_steps=180)) == ""  # R@1 0.85
    result = runner.invoke(
        cli.app,
        ["train", str(shapes / "data"), "-o", str(tmp_path / "run"), "-m", TINY,
         "--epochs", "1", "--batch-size", "64", "--workers", "0", "--device", "cpu"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    said = " ".join(result.stderr.split())
    assert "Note: this run takes only 2 optimiser steps (1 epoch of 2 steps" in said
    assert said.index("Note:") < said.index("2/2 epoch 1")  # before training; steps and epoch


def test_the_loss_option_reaches_the_service_and_a_bad_one_is_a_usage_error(
    monkeypatch, in_data_folder
):
    seen = {}

    def fake_train(config, progress=None):
        seen["config"] = config
        return _result(settings={"lr": 5e-4, "lr_reason": "given", "loss": "siglip",
                                 "loss_reason": "given"})  # fmt: skip

    monkeypatch.setattr(train_module, "train", fake_train)
    result = runner.invoke(cli.app, ["train", "pairs.csv", "-o", "runs/x", "--loss", "siglip"])
    assert result.exit_code == 0, result.stderr
    assert seen["config"].loss == "siglip"
    assert "loss siglip (given)" in result.stderr
    bad = runner.invoke(cli.app, ["train", "pairs.csv", "-o", "runs/y", "--loss", "sigmoid"])
    assert bad.exit_code == 2 and "sigmoid" in bad.stderr
    mixed = ["train", "pairs.csv", "-o", "runs/z", "--loss", "siglip", "--lambda", "0.3"]
    refused = runner.invoke(cli.app, mixed)
    assert refused.exit_code == 2 and "SigLIP's loss has none" in refused.stderr


def test_the_objective_options_reach_the_service(monkeypatch, in_data_folder):
    seen = {}

    def fake_train(config, progress=None):
        seen["config"] = config
        return _result()

    monkeypatch.setattr(train_module, "train", fake_train)
    options = ["--mask-ratio", "0.5", "--unmasked-epochs", "1", "--queue", "128",
               "--momentum", "0.99", "--image-ssl", "byol", "--ssl-weight", "0.5",
               "--batch-size", "32"]  # fmt: skip
    result = runner.invoke(cli.app, ["train", "pairs.csv", "-o", "runs/x", *options])
    assert result.exit_code == 0, result.stderr
    config = seen["config"]
    assert (config.mask_ratio, config.unmasked_epochs) == (0.5, 1)
    assert (config.queue, config.momentum) == (128, 0.99)
    assert (config.image_ssl, config.ssl_weight) == ("byol", 0.5)
    bad = runner.invoke(cli.app, ["train", "pairs.csv", "-o", "runs/y", "--image-ssl", "moco"])
    assert bad.exit_code == 2 and "moco" in bad.stderr
    uneven = ["train", "pairs.csv", "-o", "runs/z", "--queue", "100", "--batch-size", "32"]
    refused = runner.invoke(cli.app, uneven)
    assert refused.exit_code == 2 and "--queue 96 or 128" in " ".join(refused.stderr.split())
