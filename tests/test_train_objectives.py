"""``clipkit train``'s objectives beyond InfoNCE (issue #27): SigLIP's loss end to end on the
tiny architecture (its bias starts at -10 and learns, checkpoints load with it, a model with
a bias defaults to it, resume is exact), FLIP's patch masking (the tokens the transformer
sees, eval unmasked, the unmasked last epochs, GradCache) and the options' bad values."""

from __future__ import annotations

import math

import pytest
from safetensors.torch import load_file

from clipkit.errors import UsageError
from clipkit.models import load_model
from clipkit.models.openclip import list_models
from clipkit.train import train
from tests.helpers import TINY, interrupt_and_resume, logged_steps, train_config


@pytest.fixture(scope="module")
def siglip_run(few_shapes, tmp_path_factory):
    out = tmp_path_factory.mktemp("siglip") / "run"
    return train(train_config(few_shapes, out, loss="siglip", epochs=4, lr=2e-3))


def test_siglip_starts_at_t_10_b_minus_10_and_its_loss_falls(siglip_run):
    steps = logged_steps(siglip_run.run_dir)
    assert siglip_run.settings["loss"] == "siglip" and siglip_run.settings["loss_reason"] == "given"
    first = steps[0]
    assert {"loss_siglip", "bias", "temperature"} <= first.keys()
    assert "loss_image_to_text" not in first
    assert first["bias"] == pytest.approx(-10.0, abs=0.01)  # one AdamW step of lr 2e-3 away
    assert first["temperature"] == pytest.approx(0.1, rel=0.01)
    assert first["loss"] == first["loss_siglip"]
    # With cosines near 0, z ~ -10 everywhere: the S pairs cost about softplus(10) ~ 10 each,
    # the S² - S others softplus(-10) ~ 0; so the loss starts near 10 (lower as pairs align).
    assert 3.0 < first["loss"] < 11.0
    assert sum(r["loss"] for r in steps[-3:]) < sum(r["loss"] for r in steps[:3]) - 0.5
    # the bias learns: Adam moves a parameter by at most about lr a step, so it has moved
    # the same way over several steps
    assert abs(steps[-1]["bias"] - first["bias"]) > 2 * 2e-3


def test_a_siglip_checkpoint_loads_with_its_bias_and_fine_tunes_with_siglip(
    siglip_run, shapes, tmp_path
):
    weights = load_file(siglip_run.last_checkpoint)
    encoder = load_model(siglip_run.last_checkpoint, device="cpu")
    assert encoder.logit_bias == pytest.approx(float(weights["logit_bias"]))
    assert encoder.logit_scale == pytest.approx(math.exp(float(weights["logit_scale"])))
    # its config (tiny + a bias) is registered under a private name, never offered as a model
    assert all("@" not in row.spec for row in list_models("clipkit"))
    again = train(train_config(shapes, tmp_path / "again", model=siglip_run.last_checkpoint,
                               steps=2, val_split=0.0))  # fmt: skip
    assert again.settings["loss"] == "siglip"
    assert again.settings["loss_reason"] == "the model has a logit bias (SigLIP)"
    forced = train(train_config(shapes, tmp_path / "forced", model=siglip_run.last_checkpoint,
                                steps=2, val_split=0.0, loss="clip"))  # fmt: skip
    assert "loss_image_to_text" in logged_steps(forced.run_dir)[0]
    bias_before = float(weights["logit_bias"])  # CLIP's loss leaves the bias alone
    assert float(load_file(forced.last_checkpoint)["logit_bias"]) == bias_before
    # --queue extends InfoNCE: with a SigLIP model it needs --loss clip, said before training
    queued = train_config(shapes, tmp_path / "queued", model=siglip_run.last_checkpoint, queue=32)
    with pytest.raises(UsageError, match="Add --loss clip"):
        train(queued)
    assert not (tmp_path / "queued").exists()


def test_validation_loss_is_siglip_s(siglip_run):
    evaluation = siglip_run.evaluations[-1]
    assert evaluation.loss > 0 and math.isfinite(evaluation.loss)
    # softmax InfoNCE over S validation pairs is near log S for a weak model; SigLIP's is not
    # bounded by it: at t ~ 10 its first evaluation sits well above InfoNCE's log(20) ~ 3.
    assert siglip_run.evaluations[0].loss > math.log(siglip_run.val_pairs) - 1


def test_a_siglip_run_resumes_bit_for_bit(shapes, tmp_path):
    options = {"steps": 4, "val_split": 0.0, "seed": 3, "loss": "siglip"}
    train(train_config(shapes, tmp_path / "whole", **options))

    interrupt_and_resume(shapes, tmp_path / "split", **options)
    assert [r["loss"] for r in logged_steps(tmp_path / "split")] == [
        r["loss"] for r in logged_steps(tmp_path / "whole")
    ]
    whole = load_file(tmp_path / "whole" / "last.safetensors")
    split = load_file(tmp_path / "split" / "last.safetensors")
    assert float(whole["logit_bias"]) == float(split["logit_bias"])


@pytest.mark.parametrize(
    ("options", "message"),
    [({"loss": "sigmoid"}, "--loss must be one of clip, siglip"),
     ({"loss": "siglip", "weight": 0.3}, "--lambda weighs InfoNCE")],
)  # fmt: skip
def test_bad_objective_options_are_refused_before_training(shapes, tmp_path, options, message):
    with pytest.raises(UsageError, match=message):
        train(train_config(shapes, tmp_path / "bad", **options))
    assert not (tmp_path / "bad").exists()


def _tokens_seen(encoder, pixels) -> int:
    """How many tokens the image transformer's first block receives."""
    seen = []
    block = encoder.model.visual.transformer.resblocks[0]
    handle = block.register_forward_pre_hook(lambda _, args: seen.append(args[0].shape))
    try:
        encoder.model.visual(pixels)
    finally:
        handle.remove()
    (shape,) = seen
    return shape[1] if shape[0] == len(pixels) else shape[0]  # batch-first or not


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.5, 0.75, 0.99])
def test_masking_keeps_open_clip_s_share_of_patches_in_training_only(tiny_encoder, ratio):
    """clipkit-tiny: 64 × 64 pixels in 8 × 8 patches, 64 patches and a class token. open_clip's
    rule keeps max(1, floor(64 (1 - R))) patches: R 0.3 keeps 44 (ceil would keep 45)."""
    import torch

    from clipkit.models import load_model

    encoder = load_model(TINY, device="cpu")
    pixels = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    encoder.set_patch_dropout(ratio)
    encoder.model.train()
    kept = {0.0: 64, 0.3: 44, 0.5: 32, 0.75: 16, 0.99: 1}[ratio]
    assert _tokens_seen(encoder, pixels) == 1 + kept
    encoder.model.eval()
    assert _tokens_seen(encoder, pixels) == 65  # evaluation sees every patch


def test_a_masked_run_logs_its_ratio_and_ends_unmasked(few_shapes, tmp_path):
    result = train(train_config(few_shapes, tmp_path / "flip", epochs=3, mask_ratio=0.5,
                                unmasked_epochs=1))  # fmt: skip
    per_epoch = {}
    for record in logged_steps(result.run_dir):
        per_epoch.setdefault(record["epoch"], set()).add(record["mask_ratio"])
    assert per_epoch == {0: {0.5}, 1: {0.5}, 2: {0.0}}
    assert len(result.evaluations) == 3


def test_mask_ratio_zero_changes_nothing(shapes, tmp_path):
    plain = train(train_config(shapes, tmp_path / "plain", steps=3, val_split=0.0, seed=2))
    zero = train(train_config(shapes, tmp_path / "zero", steps=3, val_split=0.0, seed=2,
                              mask_ratio=0.0))  # fmt: skip
    assert [r["loss"] for r in logged_steps(plain.run_dir)] == [
        r["loss"] for r in logged_steps(zero.run_dir)
    ]


def test_grad_cache_equals_the_full_batch_with_masking(tiny_encoder):
    """GradCache replays each micro-batch with the random state of its cached pass, so the
    same patches drop twice: with one micro-batch its gradient is the full batch's (a replay
    drawing a new mask would give another). Several micro-batches draw their masks per
    micro-batch, a different but equally valid sample."""
    import contextlib

    import torch

    from clipkit.infra.distributed import World
    from clipkit.models import load_model
    from clipkit.train.objective import Objective
    from clipkit.train.step import full_batch_step, grad_cache_step

    encoder = load_model(TINY, device="cpu")
    encoder.set_patch_dropout(0.5)
    model = encoder.model.train()
    pixels = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    tokens = encoder.tokenize([f"shape {i}" for i in range(8)])
    common = {"objective": Objective(), "world": World(), "autocast": contextlib.nullcontext()}
    torch.manual_seed(7)
    full = full_batch_step(model, pixels, tokens, **common)
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    torch.manual_seed(7)
    cached = grad_cache_step(model, pixels, tokens, micro_batch=8, **common)
    assert cached.loss == pytest.approx(full.loss, rel=1e-6)
    for name, grad in expected.items():
        torch.testing.assert_close(model.get_parameter(name).grad, grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("options", "message"),
    [({"mask_ratio": 1.0}, r"--mask-ratio must be in \[0, 1\)"),
     ({"mask_ratio": -0.1}, r"--mask-ratio must be in \[0, 1\)"),
     ({"unmasked_epochs": 1}, "no --mask-ratio was given"),
     ({"mask_ratio": 0.5, "unmasked_epochs": -1}, "--unmasked-epochs must be >= 0")],
)  # fmt: skip
def test_bad_masking_options_are_refused_before_training(shapes, tmp_path, options, message):
    with pytest.raises(UsageError, match=message):
        train(train_config(shapes, tmp_path / "bad", **options))
    assert not (tmp_path / "bad").exists()


def test_masking_needs_patches_and_a_masked_epoch(shapes, tmp_path):
    with pytest.raises(UsageError, match="leaves none of the run's 2 epochs masked"):
        train(train_config(shapes, tmp_path / "all", epochs=2, mask_ratio=0.5, unmasked_epochs=2))
    with pytest.raises(UsageError, match="ResNet"):
        train(train_config(shapes, tmp_path / "rn", model="RN50:random", steps=1, mask_ratio=0.5))
