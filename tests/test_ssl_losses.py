"""The image self-supervision losses (clipkit.score.ssl_losses) against their formulas, worked
out with plain Python arithmetic on small hand-made tensors; stop-gradients checked by which
inputs receive a gradient."""

from __future__ import annotations

import math

import pytest
import torch

from clipkit.score.ssl_losses import byol_loss, nt_xent, simsiam_loss, sinkhorn, swav_loss


def _unit(*values: float) -> list[float]:
    norm = math.sqrt(sum(v * v for v in values))
    return [v / norm for v in values]


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_nt_xent_over_four_views_matches_its_definition():
    first = [_unit(1, 0), _unit(1, 2)]
    second = [_unit(3, 1), _unit(-1, 1)]
    views = first + second  # 2N = 4; view i's positive is i ± 2
    tau = 0.5
    total = 0.0
    for i in range(4):
        positive = (i + 2) % 4
        denominator = sum(math.exp(_dot(views[i], views[k]) / tau) for k in range(4) if k != i)
        total += -math.log(math.exp(_dot(views[i], views[positive]) / tau) / denominator)
    expected = total / 4
    loss = nt_xent(torch.tensor(first) * 3.0, torch.tensor(second) * 0.5, temperature=tau)
    assert loss.item() == pytest.approx(expected, rel=1e-6)  # inputs are normalised first


def test_nt_xent_is_low_when_views_agree_and_high_when_they_are_swapped():
    torch.manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    agreeing = nt_xent(images, images + 0.01 * torch.randn(8, 16))
    shuffled = nt_xent(images, images.roll(1, dims=0))
    assert float(agreeing) < float(shuffled)


def test_simsiam_is_minus_the_mean_cosine_and_stops_the_projection_gradient():
    p1 = torch.tensor([[1.0, 0.0], [1.0, 1.0]], requires_grad=True)
    p2 = torch.tensor([[0.0, 2.0], [3.0, 4.0]], requires_grad=True)
    z1 = torch.tensor([[1.0, 1.0], [0.0, 1.0]], requires_grad=True)
    z2 = torch.tensor([[2.0, 0.0], [-1.0, 1.0]], requires_grad=True)
    # D(p1, z2): cos([1,0],[2,0]) = 1, cos([1,1],[-1,1]) = 0 -> -0.5
    # D(p2, z1): cos([0,2],[1,1]) = 1/sqrt2, cos([3,4],[0,1]) = 0.8 -> -(0.7071 + 0.8)/2
    expected = 0.5 * -0.5 + 0.5 * -(1 / math.sqrt(2) + 0.8) / 2
    loss = simsiam_loss((p1, p2), (z1, z2))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert p1.grad is not None and p2.grad is not None
    assert z1.grad is None and z2.grad is None  # stop-gradient: the projections are targets


def test_byol_is_two_minus_two_cosine_and_its_targets_get_no_gradient():
    q1 = torch.tensor([[1.0, 0.0]], requires_grad=True)
    q2 = torch.tensor([[0.0, 1.0]], requires_grad=True)
    t1 = torch.tensor([[1.0, 1.0]], requires_grad=True)
    t2 = torch.tensor([[-1.0, 0.0]], requires_grad=True)
    # 2 - 2cos(q1, t2) = 2 - 2(-1) = 4; 2 - 2cos(q2, t1) = 2 - sqrt2
    expected = 0.5 * 4 + 0.5 * (2 - math.sqrt(2))
    loss = byol_loss((q1, q2), (t1, t2))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert q1.grad is not None and t1.grad is None and t2.grad is None


def test_sinkhorn_codes_meet_the_sample_and_prototype_marginals():
    torch.manual_seed(0)
    scores = torch.nn.functional.normalize(torch.randn(12, 8), dim=-1) @ (
        torch.nn.functional.normalize(torch.randn(4, 8), dim=-1).T
    )  # 12 samples, 4 prototypes
    codes = sinkhorn(scores, epsilon=0.05, iterations=3)
    assert codes.shape == (12, 4)
    assert torch.allclose(codes.sum(dim=1), torch.ones(12), atol=1e-5)  # exact: the last step
    converged = sinkhorn(scores, epsilon=0.5, iterations=200)
    assert torch.allclose(converged.sum(dim=1), torch.ones(12), atol=1e-5)
    assert torch.allclose(converged.sum(dim=0), torch.full((4,), 12 / 4), atol=1e-4)


def test_sinkhorn_one_iteration_by_hand():
    scores = torch.tensor([[0.0, 0.1], [0.1, 0.0], [0.0, 0.0]])
    eps = 0.1
    e = [[math.exp(s / eps) for s in row] for row in scores.tolist()]
    # prototype columns to 1/P each, then sample rows to 1/N each, times N
    columns = [sum(row[j] for row in e) for j in range(2)]
    step = [[row[j] / columns[j] / 2 for j in range(2)] for row in e]
    expected = [[v / sum(row) / 3 * 3 for v in row] for row in step]
    codes = sinkhorn(scores, epsilon=eps, iterations=1)
    assert torch.allclose(codes, torch.tensor(expected), atol=1e-6)


def test_swav_is_the_swapped_cross_entropy_of_sinkhorn_codes():
    torch.manual_seed(1)
    first = torch.nn.functional.normalize(torch.randn(6, 5), dim=-1)
    second = torch.nn.functional.normalize(torch.randn(6, 5), dim=-1)
    first.requires_grad_()
    tau = 0.2
    q1, q2 = sinkhorn(first), sinkhorn(second)
    expected = 0.0
    for n in range(6):
        for codes, scores in ((q2[n], first[n]), (q1[n], second[n])):
            logs = [s / tau for s in scores.tolist()]
            log_norm = math.log(sum(math.exp(v) for v in logs))
            expected -= (
                0.5 * sum(c * (v - log_norm) for c, v in zip(codes.tolist(), logs, strict=True)) / 6
            )
    loss = swav_loss(first, second, temperature=tau)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()  # the codes are constants: the gradient flows through the scores only
    assert first.grad is not None and torch.isfinite(first.grad).all()
