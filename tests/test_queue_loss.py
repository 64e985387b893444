"""The queue loss: a hand-built 2-pair batch with a 3-key queue against the definition, an
empty queue equals the plain contrastive loss, and no gradient reaches the queues."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from clipkit.score import contrastive_loss
from clipkit.score.queue_loss import queue_contrastive_loss


def _direction(query: list[float], positives: list[list[float]], own: int,
               queue: list[list[float]], t: float) -> float:  # fmt: skip
    """-log exp(t<q, p_own>) / (Σ_batch exp(t<q, p>) + Σ_queue exp(t<q, k>)), by hand."""
    dot = lambda u, v: sum(x * y for x, y in zip(u, v, strict=True))  # noqa: E731
    terms = [math.exp(t * dot(query, p)) for p in positives]
    queued = [math.exp(t * dot(query, k)) for k in queue]
    return -math.log(terms[own] / (sum(terms) + sum(queued)))


def test_two_pairs_and_a_three_key_queue_by_hand():
    image = [[1.0, 0.0], [0.6, 0.8]]
    text = [[0.8, 0.6], [0.0, 1.0]]
    text_queue = [[1.0, 0.0], [-1.0, 0.0], [0.0, -1.0]]
    image_queue = [[0.0, 1.0], [0.6, -0.8], [-0.6, 0.8]]
    t, weight = 2.0, 0.3
    i2t = [_direction(image[i], text, i, text_queue, t) for i in range(2)]
    t2i = [_direction(text[i], image, i, image_queue, t) for i in range(2)]
    expected = weight * sum(i2t) / 2 + (1 - weight) * sum(t2i) / 2
    got = queue_contrastive_loss(
        torch.tensor(image), torch.tensor(text), torch.tensor(t),
        torch.tensor(image_queue), torch.tensor(text_queue), weight,
    )  # fmt: skip
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # -log e^1.6 / (e^1.6 + e^0 + e^2 + e^-2 + e^0) = -log(4.953 / 14.477)
    assert i2t[0] == pytest.approx(1.0726, abs=1e-4)


def test_an_empty_queue_is_the_plain_loss_and_the_queue_gets_no_gradient():
    generator = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(6, 8, generator=generator), dim=-1).requires_grad_()
    text = F.normalize(torch.randn(6, 8, generator=generator), dim=-1)
    empty = torch.empty(0, 8)
    scale = torch.tensor(10.0)
    plain = contrastive_loss(image, text, scale.log(), weight=0.7)
    queued = queue_contrastive_loss(image, text, scale, empty, empty, 0.7)
    assert queued.item() == pytest.approx(plain.item(), rel=1e-6)
    queue = F.normalize(torch.randn(5, 8, generator=generator), dim=-1).requires_grad_()
    loss = queue_contrastive_loss(image, text, scale, queue, queue, 0.5)
    loss.backward()
    assert queue.grad is None and image.grad is not None
    assert loss.item() > queued.item()  # more negatives, a larger loss
