"""Training under torchrun on the CPU (gloo, 2 processes): the first step's loss and gradients
equal one process on the same global batch, for the full-batch and the GradCache step, with
CLIP's loss and SigLIP's (whose negatives include every rank's texts), and
``clipkit train`` itself runs unchanged with the same losses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clipkit.inputs.synthetic import write_captioned_shapes
from tests.helpers import TINY, torchrun

HELPER = Path(__file__).with_name("ddp_step.py")
ROOT = Path(__file__).resolve().parents[1]


def _run(args, cwd=ROOT):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.e2e
def test_two_processes_equal_one_on_the_global_batch(tmp_path):
    _run([sys.executable, str(HELPER), str(tmp_path / "one.pt")])
    _run(torchrun(str(HELPER), str(tmp_path / "two.pt")))
    one = torch.load(tmp_path / "one.pt", weights_only=True)
    two = torch.load(tmp_path / "two.pt", weights_only=True)
    objectives = ("clip", "siglip", "clip+queue+simclr", "clip+byol", "siglip+swav",
                  "clip+simsiam")  # fmt: skip
    for objective in objectives:
        for mode in ("full", "cache"):
            _assert_same_step(one[f"{objective}-{mode}"], two[f"{objective}-{mode}"])
            # GradCache (micro-batches of 3) gives the full batch's gradient under torchrun too
            _assert_same_step(one[f"{objective}-full"], two[f"{objective}-{mode}"])
    assert "logit_bias" in one["siglip-full"]["grads"]  # SigLIP's bias learns, on every rank
    assert any(name.startswith("heads.") for name in one["clip+byol-full"]["grads"])
    # Every rank's keys reach the queue: the gathered keys are the whole batch's, in order.
    for one_keys, two_keys in zip(one["clip+queue+simclr-full"]["keys"],
                                  two["clip+queue+simclr-full"]["keys"], strict=True):  # fmt: skip
        assert one_keys.shape == (8, 128)  # the tiny model embeds in 128 dimensions
        torch.testing.assert_close(two_keys, one_keys, rtol=1e-5, atol=1e-6)


def _assert_same_step(one, two):
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)
    assert (two["ssl"] is None) == (one["ssl"] is None)
    assert two["grads"].keys() == one["grads"].keys()
    # float32 sums err in proportion to the terms summed, not to the result: a gradient that is
    # zero by construction (a bias before BatchNorm in the SSL heads) comes out as noise of the
    # step's scale (2.8e-6 here, where the largest gradient is about 3), in both runs alike.
    atol = 1e-5 * max(float(grad.abs().max()) for grad in one["grads"].values())
    for name, grad in one["grads"].items():
        torch.testing.assert_close(
            two["grads"][name], grad, rtol=1e-4, atol=atol, msg=lambda m, n=name: f"{n}: {m}"
        )


@pytest.mark.slow  # three more interpreter start-ups (~35 s on two cores)
def test_clipkit_train_runs_under_torchrun(tmp_path):
    write_captioned_shapes(tmp_path / "data", 24)
    options = [
        "train",
        str(tmp_path / "data"),
        "-m",
        TINY,
        "--steps",
        "2",
        "--batch-size",
        "8",
        "--val-split",
        "0",
        "--workers",
        "0",
        "--device",
        "cpu",
    ]
    _run([sys.executable, "-m", "clipkit", *options, "-o", str(tmp_path / "one")])
    _run(torchrun("-m", "clipkit", *options, "-o", str(tmp_path / "two")))

    def losses(run):
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line)["loss"] for line in lines]

    assert losses("two") == pytest.approx(losses("one"), rel=1e-5)
    assert json.loads((tmp_path / "two" / "config.json").read_text())["resolved"]["world_size"] == 2
