"""One training step: λ and temperature reach the loss, SigLIP's loss by its definition,
GradCache equals the full-batch step (both losses), AdamW groups exclude what they should,
and the warmup + cosine schedule by hand."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
import torch.nn.functional as F

from clipkit.infra.distributed import World
from clipkit.train.objective import Objective
from clipkit.train.step import (
    decays,
    full_batch_step,
    grad_cache_step,
    learning_rate,
    param_groups,
)
from tests.helpers import TINY

CAPTIONS = [f"a {c} {s}" for c in ("red", "green", "blue") for s in ("square", "circle", "star")]


@pytest.fixture
def batch(tiny_encoder):
    generator = torch.Generator().manual_seed(5)
    pixels = torch.randn(9, 3, 64, 64, generator=generator)
    return pixels, tiny_encoder.tokenize(CAPTIONS)


@pytest.fixture
def model(tiny_encoder):
    from clipkit.models import load_model

    model = load_model(TINY, device="cpu").model.train()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1 / 0.05))
    return model


def _gradients(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _independent_loss(model, pixels, tokens, weight):
    """λ·CE(rows) + (1-λ)·CE(columns) of scale·A·Bᵀ, straight from the definition."""
    with torch.no_grad():
        a = F.normalize(model.encode_image(pixels), dim=-1)
        b = F.normalize(model.encode_text(tokens), dim=-1)
        logits = model.logit_scale.exp() * a @ b.T
        target = torch.arange(len(a))
        rows, cols = F.cross_entropy(logits, target), F.cross_entropy(logits.T, target)
    return weight * rows + (1 - weight) * cols, rows, cols


@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_lambda_and_temperature_reach_the_loss(model, batch, weight):
    pixels, tokens = batch
    expected, rows, cols = _independent_loss(model, pixels, tokens, weight)
    losses = full_batch_step(
        model, pixels, tokens, objective=Objective("clip", weight), world=World(),
        autocast=contextlib.nullcontext(),
    )  # fmt: skip
    assert losses.loss == pytest.approx(float(expected), rel=1e-5)
    assert losses.image_to_text == pytest.approx(float(rows), rel=1e-5)
    assert losses.text_to_image == pytest.approx(float(cols), rel=1e-5)
    assert losses.temperature == pytest.approx(0.05, rel=1e-6)


def test_siglip_step_is_the_pairwise_sigmoid_loss_and_trains_the_bias(siglip_model, batch):
    model = siglip_model
    pixels, tokens = batch
    with torch.no_grad():  # -(1/S) Σ_ij log σ(y_ij z_ij), straight from the definition
        a = F.normalize(model.encode_image(pixels), dim=-1)
        b = F.normalize(model.encode_text(tokens), dim=-1)
        logits = model.logit_scale.exp() * a @ b.T + model.logit_bias
        signs = 2 * torch.eye(len(a)) - 1
        expected = -F.logsigmoid(signs * logits).sum() / len(a)
    losses = full_batch_step(
        model, pixels, tokens, objective=Objective("siglip"), world=World(),
        autocast=contextlib.nullcontext(),
    )  # fmt: skip
    assert losses.loss == pytest.approx(float(expected), rel=1e-5)
    assert losses.bias == pytest.approx(-3.0) and losses.image_to_text is None
    assert losses.as_record().keys() == {"loss_siglip", "bias", "temperature"}
    grads = _gradients(model)
    assert float(grads["logit_bias"]) != 0.0 and "logit_scale" in grads


@pytest.fixture
def siglip_model():
    from clipkit.models import load_model

    encoder = load_model(TINY, device="cpu")
    encoder.add_logit_bias(-3.0)
    with torch.no_grad():
        encoder.model.logit_scale.fill_(math.log(4.0))
    return encoder.model.train()


@pytest.mark.parametrize("objective", ["clip", "siglip"])
@pytest.mark.parametrize("micro_batch", [1, 4, 9])
def test_grad_cache_step_equals_full_batch_step(model, siglip_model, batch, micro_batch, objective):
    model = siglip_model if objective == "siglip" else model
    pixels, tokens = batch
    nothing = contextlib.nullcontext()
    common = {"objective": Objective(objective, 0.3), "world": World(), "autocast": nothing}
    full = full_batch_step(model, pixels, tokens, **common)
    expected = _gradients(model)
    model.zero_grad(set_to_none=True)
    cached = grad_cache_step(model, pixels, tokens, micro_batch=micro_batch, **common)
    actual = _gradients(model)
    assert cached.loss == pytest.approx(full.loss, rel=1e-6)
    assert actual.keys() == expected.keys() and "logit_scale" in actual
    assert ("logit_bias" in actual) == (objective == "siglip")
    for name, grad in expected.items():
        torch.testing.assert_close(actual[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_no_weight_decay_on_biases_norms_temperature_and_embeddings(model):
    decayed, plain = param_groups(model, 0.2)
    decayed_ids = {id(p) for p in decayed["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in decayed_ids}
    assert decayed["weight_decay"] == 0.2 and plain["weight_decay"] == 0.0
    for name in (
        "logit_scale",
        "positional_embedding",
        "token_embedding.weight",
        "visual.class_embedding",
        "ln_final.weight",
        "ln_final.bias",
    ):
        assert name not in names, name
    assert "text_projection" in names
    assert any(n.endswith("attn.in_proj_weight") for n in names)
    assert all(not n.endswith(".bias") for n in names)
    assert decays("visual.conv1.weight", torch.zeros(2, 2))
    assert not decays("visual.ln_pre.weight", torch.zeros(2))


def test_frozen_parameters_are_left_out_of_the_optimiser(model):
    for parameter in model.visual.parameters():
        parameter.requires_grad_(False)
    groups = param_groups(model, 0.1)
    optimised = {id(p) for group in groups for p in group["params"]}
    assert not optimised & {id(p) for p in model.visual.parameters()}


def test_learning_rate_warmup_then_cosine_by_hand():
    # warmup 4 of 14 steps to a peak of 1.0, then half a cosine period over the 10 left
    assert [learning_rate(s, 1.0, 4, 14) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert learning_rate(4, 1.0, 4, 14) == pytest.approx(1.0)
    assert learning_rate(9, 1.0, 4, 14) == pytest.approx(0.5)  # the cosine's midpoint
    assert learning_rate(14, 1.0, 4, 14) == pytest.approx(0.0, abs=1e-12)
