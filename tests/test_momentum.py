"""The key queue (FIFO order, wrap-around, more keys than it holds, state round trip bit for
bit) and the momentum update on one parameter, by hand."""

from __future__ import annotations

import torch

from clipkit.train.momentum import KeyQueue, momentum_update


def _rows(*values: float) -> torch.Tensor:
    return torch.tensor([[v, -v] for v in values])


def test_the_queue_is_first_in_first_out_and_wraps_around():
    queue = KeyQueue(3, 2)
    assert queue.current().shape == (0, 2)
    queue.enqueue(_rows(1, 2))
    assert queue.current().tolist() == _rows(1, 2).tolist()
    queue.enqueue(_rows(3, 4))  # 1 falls out; 4 wraps to the front of the buffer
    assert queue.current().tolist() == _rows(2, 3, 4).tolist()
    assert queue.keys.tolist() == _rows(4, 2, 3).tolist() and queue.position == 1
    queue.enqueue(_rows(5, 6, 7, 8, 9))  # more than it holds: the last three
    assert queue.current().tolist() == _rows(7, 8, 9).tolist()
    queue.enqueue(_rows(10))
    assert queue.current().tolist() == _rows(8, 9, 10).tolist()


def test_the_queue_state_round_trips_bit_for_bit():
    queue = KeyQueue(4, 2)
    queue.enqueue(torch.randn(6, 2, generator=torch.Generator().manual_seed(0)))
    again = KeyQueue(4, 2)
    again.load_state_dict(queue.state_dict())
    assert torch.equal(again.current(), queue.current())
    assert (again.position, again.filled) == (queue.position, queue.filled)
    queue.enqueue(_rows(1.5))
    again.enqueue(_rows(1.5))
    assert torch.equal(again.current(), queue.current())


def test_a_zero_size_queue_holds_nothing():
    queue = KeyQueue(0, 2)
    queue.enqueue(_rows(1, 2))
    assert queue.current().shape == (0, 2)


def test_momentum_update_by_hand():
    target = torch.tensor([1.0, -2.0])
    source = torch.tensor([3.0, 4.0], requires_grad=True)
    momentum_update([target], [source], 0.9)  # 0.9·1 + 0.1·3 = 1.2; 0.9·-2 + 0.1·4 = -1.4
    assert torch.allclose(target, torch.tensor([1.2, -1.4]))
    momentum_update([target], [source], 1.0)  # M = 1: the target stays
    assert torch.allclose(target, torch.tensor([1.2, -1.4]))
    momentum_update([target], [source], 0.0)  # M = 0: a copy
    assert torch.equal(target, source.detach()) and source.grad is None
