"""SigLIP's sigmoid loss: a hand-worked 2 x 2 case, agreement with open_clip's SigLipLoss in
value and every gradient, the tiled backend against the reference, the clamp and bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import SigLipLoss

from clipkit import score
from clipkit.errors import InputError
from clipkit.score import losses
from clipkit.score.tiled_sigmoid import tiled_sigmoid_loss


@pytest.fixture(params=["tiled", "reference"])
def backend(request, monkeypatch):
    monkeypatch.setattr(losses, "LOSS_BACKEND", request.param)
    return request.param


def _unit(*shape, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=generator, dtype=dtype), dim=-1)


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_hand_worked_two_pairs(backend):
    """a = b = the standard basis, t = 2, b = -1: z = 2I - 1, so the pairs score 1 and the
    other two combinations -1; loss = -(1/2) [2 log σ(1) + 2 log σ(1)]."""
    image = torch.eye(2, requires_grad=True)
    text = torch.eye(2)
    bias = torch.tensor(-1.0, requires_grad=True)
    loss = score.sigmoid_loss(image, text, torch.tensor(math.log(2.0)), bias)
    assert loss.item() == pytest.approx(-2 * _log_sigmoid(1.0), rel=1e-6)  # 0.6265
    assert loss.item() == pytest.approx(0.62652, abs=1e-5)
    grad_image, grad_bias = torch.autograd.grad(loss, (image, bias))
    # dL/dz = (σ(z) - y01)/S with y01 = 1 on pairs: pairs (σ(1) - 1)/2, others σ(-1)/2
    pair, other = (1 / (1 + math.exp(-1)) - 1) / 2, (1 / (1 + math.exp(1))) / 2
    assert grad_bias.item() == pytest.approx(2 * pair + 2 * other, abs=1e-6)  # = 0
    # dL/da_0 = t (dL/dz_00 b_0 + dL/dz_01 b_1) = 2 (pair, other)
    assert grad_image[0].tolist() == pytest.approx([2 * pair, 2 * other], abs=1e-6)


@pytest.mark.parametrize(
    ("size", "dim", "log_scale", "bias"),
    [(1, 4, math.log(10), -10.0), (7, 16, math.log(10), -10.0), (64, 32, 1.0, -3.0),
     (130, 8, 3.0, 0.5)],
)  # fmt: skip
def test_value_and_gradients_equal_open_clip_siglip_loss(backend, size, dim, log_scale, bias):
    image = _unit(size, dim, seed=1).requires_grad_()
    text = _unit(size, dim, seed=2).requires_grad_()
    scale = torch.tensor(log_scale, requires_grad=True)
    shift = torch.tensor(bias, requires_grad=True)
    ours = score.sigmoid_loss(image, text, scale, shift)
    got = torch.autograd.grad(ours, (image, text, scale, shift))

    image2 = image.detach().clone().requires_grad_()
    text2 = text.detach().clone().requires_grad_()
    scale2 = torch.tensor(log_scale, requires_grad=True)
    shift2 = torch.tensor(bias, requires_grad=True)
    theirs = SigLipLoss()(image2, text2, scale2.exp(), shift2)
    want = torch.autograd.grad(theirs, (image2, text2, scale2, shift2))
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5, abs=1e-6)
    for mine, peer in zip(got, want, strict=True):
        torch.testing.assert_close(mine, peer, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("size", "tile"), [(37, 8), (64, 64), (65, 16), (5, 1000)])
def test_tiled_equals_reference_for_any_tiling(size, tile):
    image = _unit(size, 12, dtype=torch.float64, seed=3).requires_grad_()
    text = _unit(size, 12, dtype=torch.float64, seed=4).requires_grad_()
    scale = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
    tiled = tiled_sigmoid_loss(image, text, scale, bias, tile)
    reference = score.reference.sigmoid_loss(image, text, scale, bias)
    torch.testing.assert_close(tiled, reference)
    for mine, peer in zip(
        torch.autograd.grad(tiled, (image, text, scale, bias)),
        torch.autograd.grad(reference, (image, text, scale, bias)),
        strict=True,
    ):
        torch.testing.assert_close(mine, peer)
    assert torch.autograd.gradcheck(
        lambda a, b, t, c: tiled_sigmoid_loss(a, b, t, c, tile), (image, text, scale, bias)
    )


def test_scale_is_clamped_at_100_and_large_logits_do_not_overflow(backend):
    image, text = _unit(6, 8, seed=5), _unit(6, 8, seed=6)
    bias = torch.tensor(-10.0)
    clamped = score.sigmoid_loss(image, text, torch.tensor(20.0), bias)
    at_limit = score.sigmoid_loss(image, text, torch.tensor(math.log(100.0)), bias)
    assert clamped.item() == pytest.approx(at_limit.item(), rel=1e-6)
    assert math.isfinite(clamped.item())


def test_bfloat16_inputs_accumulate_in_float32():
    image, text = _unit(40, 16, seed=7), _unit(40, 16, seed=8)
    scale, bias = torch.tensor(math.log(10.0)), torch.tensor(-10.0)
    exact = score.reference.sigmoid_loss(image, text, scale.exp(), bias)
    half = tiled_sigmoid_loss(image.bfloat16(), text.bfloat16(), scale.exp(), bias, 16)
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(exact.item(), rel=2e-2)


@pytest.mark.parametrize(
    ("a", "b"), [((4, 8), (3, 8)), ((4, 8), (4, 6)), ((0, 8), (0, 8)), ((8,), (8,))]
)
def test_bad_inputs(a, b):
    with pytest.raises(InputError):
        score.sigmoid_loss(torch.zeros(a), torch.zeros(b), torch.tensor(0.0), torch.tensor(0.0))
