"""The contrastive loss: a hand-worked example, agreement with open_clip's ClipLoss, the
definition for λ != 0.5, and the tiled backend against the reference in hard cases."""

from __future__ import annotations

import math

import open_clip
import pytest
import torch
import torch.nn.functional as F

from clipkit import score
from clipkit.errors import InputError
from clipkit.score import losses, reference
from clipkit.score.tiled_loss import tiled_contrastive_loss

WORKED_LOGITS = [[2.0, 0.5, -1.0], [0.3, 1.8, 0.2], [-0.5, 0.4, 1.5]]


@pytest.fixture(params=["tiled", "reference"])
def backend(request, monkeypatch):
    monkeypatch.setattr(losses, "LOSS_BACKEND", request.param)
    return request.param


def _row_loss(row: list[float], target: int) -> float:
    """-log softmax(row)[target], straight from the definition."""
    return -math.log(math.exp(row[target]) / sum(math.exp(x) for x in row))


def _unit(*shape, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=generator, dtype=dtype), dim=-1)


def test_worked_example_probabilities_gradient_and_sgd_step(backend):
    image = torch.tensor(WORKED_LOGITS, requires_grad=True)
    text = torch.eye(3)  # logits = image @ I = the matrix itself; scale exp(0) = 1
    loss = score.contrastive_loss(image, text, torch.tensor(0.0), weight=1.0)
    expected_rows = [_row_loss(row, i) for i, row in enumerate(WORKED_LOGITS)]
    assert loss.item() == pytest.approx(sum(expected_rows) / 3, rel=1e-6)

    (grad,) = torch.autograd.grad(loss, image)
    row_gradient = (3 * grad[0]).tolist()  # the mean over 3 rows scales each row's term by 1/3
    probabilities = [g + (1.0 if k == 0 else 0.0) for k, g in enumerate(row_gradient)]
    assert probabilities == pytest.approx([0.785, 0.175, 0.039], abs=1e-3)
    assert row_gradient == pytest.approx([-0.215, 0.175, 0.039], abs=1e-3)
    assert expected_rows[0] == pytest.approx(0.242, abs=1e-3)
    assert expected_rows[0] != pytest.approx(0.34, abs=0.05)  # the widely copied wrong figure

    # One SGD step with lr 0.1 on row 0's own loss, then the row loss again via the function.
    stepped = image.detach().clone()
    stepped[0] -= 0.1 * torch.tensor(row_gradient)
    assert stepped[0].tolist() == pytest.approx([2.0215, 0.4825, -1.0039], abs=1e-4)
    new_loss = score.contrastive_loss(stepped, text, torch.tensor(0.0), weight=1.0)
    new_row_loss = 3 * new_loss.item() - expected_rows[1] - expected_rows[2]
    assert new_row_loss == pytest.approx(0.233, abs=1e-3)
    assert new_row_loss == pytest.approx(_row_loss(stepped[0].tolist(), 0), rel=1e-5)


def test_weight_zero_is_the_text_to_image_direction(backend):
    image = torch.tensor(WORKED_LOGITS)
    loss = score.contrastive_loss(image, torch.eye(3), torch.tensor(0.0), weight=0.0)
    columns = [[WORKED_LOGITS[i][k] for i in range(3)] for k in range(3)]
    expected = sum(_row_loss(col, k) for k, col in enumerate(columns)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("size", [1, 7, 64, 300])
@pytest.mark.parametrize("dim", [4, 32, 128])
# Below the clamp at 1/t = 100, where ClipLoss (which does not clamp) has the same gradient.
@pytest.mark.parametrize("temperature", [1.0, 0.07, 0.0125])
def test_agrees_with_open_clip_clip_loss(backend, size, dim, temperature):
    a = _unit(size, dim, seed=size + dim).requires_grad_()
    b = _unit(size, dim, seed=size * dim + 1).requires_grad_()
    logit_scale = torch.tensor(math.log(1 / temperature), requires_grad=True)
    ours = score.contrastive_loss(a, b, logit_scale, tile=48)
    grads = torch.autograd.grad(ours, [a, b, logit_scale])

    a_ref, b_ref = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    scale_ref = torch.tensor(math.log(1 / temperature), requires_grad=True)
    theirs = open_clip.ClipLoss()(a_ref, b_ref, scale_ref.exp())
    expected = torch.autograd.grad(theirs, [a_ref, b_ref, scale_ref])

    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5, abs=1e-6)
    for got, want in zip(grads, expected, strict=True):
        assert _relative_error(got, want) <= 1e-4


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """Normwise relative error; elementwise ratios are meaningless where gradients cancel to ~0
    (measured: ours and ClipLoss's float32 gradients are both ~1e-6 from float64 in norm)."""
    scale = float(want.norm())
    return float((got - want).norm()) / scale if scale > 0 else float(got.norm())


def _definition(a: torch.Tensor, b: torch.Tensor, scale: float, weight: float) -> float:
    """The loss written out term by term, in float64, with no shared code."""
    size = a.shape[0]
    s = [[float(a[i] @ b[k]) * scale for k in range(size)] for i in range(size)]
    total = 0.0
    for i in range(size):
        row = -s[i][i] + math.log(sum(math.exp(s[i][k]) for k in range(size)))
        col = -s[i][i] + math.log(sum(math.exp(s[k][i]) for k in range(size)))
        total += weight * row + (1 - weight) * col
    return total / size


@pytest.mark.parametrize("weight", [0.0, 0.25, 0.9, 1.0])
def test_weighted_directions_match_the_definition(backend, weight):
    a, b = _unit(9, 6, dtype=torch.float64, seed=3), _unit(9, 6, dtype=torch.float64, seed=4)
    loss = score.contrastive_loss(a, b, torch.tensor(math.log(20.0)), weight=weight, tile=4)
    assert loss.item() == pytest.approx(_definition(a, b, 20.0, weight), rel=1e-10)


def _tiled_vs_reference(a, b, logit_scale, weight=0.5, tile=32):
    a1, b1 = a.clone().requires_grad_(), b.clone().requires_grad_()
    s1 = logit_scale.clone().requires_grad_()
    tiled = tiled_contrastive_loss(a1, b1, s1.clamp(max=math.log(100)).exp(), weight, tile)
    g1 = torch.autograd.grad(tiled, [a1, b1, s1])
    a2, b2 = a.clone().requires_grad_(), b.clone().requires_grad_()
    s2 = logit_scale.clone().requires_grad_()
    ref = reference.contrastive_loss(a2, b2, s2.clamp(max=math.log(100)).exp(), weight)
    g2 = torch.autograd.grad(ref, [a2, b2, s2])
    return (tiled, g1), (ref, g2)


@pytest.mark.parametrize(
    ("size", "tile"), [(1, 32), (2, 1), (33, 32), (100, 7), (64, 64), (65, 16), (5, 1000)]
)
@pytest.mark.parametrize("weight", [0.5, 0.3])
def test_tiled_equals_reference_for_any_tiling(size, tile, weight):
    a, b = _unit(size, 16, dtype=torch.float64, seed=size), _unit(size, 16, dtype=torch.float64)
    (tiled, g1), (ref, g2) = _tiled_vs_reference(
        a, b, torch.tensor(2.0, dtype=torch.float64), weight, tile
    )
    torch.testing.assert_close(tiled, ref, rtol=1e-12, atol=1e-12)
    for got, want in zip(g1, g2, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_duplicated_rows():
    base = _unit(10, 8, dtype=torch.float64)
    a = torch.cat([base, base[:5]])
    b = torch.cat([base, base[:5]])
    (tiled, g1), (ref, g2) = _tiled_vs_reference(
        a, b, torch.tensor(3.0, dtype=torch.float64), tile=4
    )
    torch.testing.assert_close(tiled, ref)
    for got, want in zip(g1, g2, strict=True):
        torch.testing.assert_close(got, want)


def test_extreme_temperature_does_not_overflow():
    # Untrained (random) features at the maximum scale: logits span about ±100 per row, so
    # exp(logit - fixed max) underflows; running maxima must keep every term finite.
    a, b = _unit(200, 3, seed=1), _unit(200, 3, seed=2)
    (tiled, g1), (ref, g2) = _tiled_vs_reference(a, b, torch.tensor(math.log(100.0)), tile=64)
    assert torch.isfinite(tiled) and all(torch.isfinite(g).all() for g in g1)
    torch.testing.assert_close(tiled, ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(g1, g2, strict=True):
        assert _relative_error(got, want) <= 1e-4


def test_scale_is_clamped_at_100():
    a, b = _unit(6, 4, seed=5), _unit(6, 4, seed=6)
    above = torch.tensor(6.0, requires_grad=True)  # exp(6) ≈ 403 > 100
    loss = score.contrastive_loss(a, b, above)
    at_max = score.contrastive_loss(a, b, torch.tensor(math.log(100.0)))
    assert loss.item() == pytest.approx(at_max.item(), rel=1e-6)
    (grad,) = torch.autograd.grad(loss, above)
    assert grad.item() == 0.0


def test_bfloat16_inputs_accumulate_in_float32():
    a, b = _unit(130, 32, seed=7), _unit(130, 32, seed=8)
    logit_scale = torch.tensor(math.log(1 / 0.07))
    low = score.contrastive_loss(a.bfloat16(), b.bfloat16(), logit_scale, tile=64)
    # Against the same bf16 values in float64: the bf16 matmul rounds each logit (8 bits of
    # mantissa), which moves this loss by ~3e-5; summing the exponentials in bf16 as well
    # moves it by ~5e-3 (the reference run on bf16 tensors). 2e-4 tells them apart.
    exact = reference.contrastive_loss(
        a.bfloat16().double(), b.bfloat16().double(), logit_scale.exp().double()
    )
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(exact.item(), rel=2e-4)


@pytest.mark.parametrize(
    ("a", "b", "weight", "match"),
    [
        (torch.zeros(3, 4), torch.zeros(2, 4), 0.5, "must both be"),
        (torch.zeros(3), torch.zeros(3), 0.5, "must both be"),
        (torch.zeros(0, 4), torch.zeros(0, 4), 0.5, "at least one pair"),
        (torch.zeros(2, 4), torch.zeros(2, 4), 1.5, "λ must be"),
    ],
)
def test_bad_inputs(a, b, weight, match):
    with pytest.raises(InputError, match=match):
        score.contrastive_loss(a, b, torch.tensor(0.0), weight=weight)


def test_backend_choice_is_reported(monkeypatch):
    assert score.loss_backend("cpu") == ("tiled", "cpu tensors")
    assert score.loss_backend("cpu", torch.bfloat16, 4096)[0] == "tiled"
    monkeypatch.setattr(losses, "LOSS_BACKEND", "reference")
    name, reason = score.loss_backend("cpu")
    assert name == "reference" and "forced" in reason
