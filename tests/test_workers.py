"""The decode workers of the ONNX runtime (``clipkit.inputs.workers``), which run without torch:
batches come back in order with a bounded number in flight, Ctrl-C is left to the main process
and its objects stay frozen across the fork, a worker that dies fails the run instead of hanging
it, and an early stop ends them."""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
from concurrent.futures.process import BrokenProcessPool

import pytest

from clipkit.inputs.workers import ordered_batches


class _Squares:
    """Item i is i squared, and says which process made it."""

    def __len__(self) -> int:
        return 100

    def __getitem__(self, index: int) -> tuple[int, int]:
        return index * index, os.getpid()


def _batches(size: int, count: int) -> list[range]:
    return [range(s, min(s + size, count)) for s in range(0, count, size)]


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_batches_come_back_in_order(workers):
    made = list(ordered_batches(_Squares(), list, _batches(7, 100), workers=workers, ahead=4))
    assert [value for batch in made for value, _ in batch] == [i * i for i in range(100)]
    pids = {pid for batch in made for _, pid in batch}
    assert (pids == {os.getpid()}) if workers == 0 else (os.getpid() not in pids)


def test_no_more_than_ahead_batches_are_in_flight(monkeypatch):
    """Every batch handed to the workers is counted against those handed back: with ahead=3
    the consumer holds one batch while at most three more are read, and never a fourth. (The
    count is taken as each batch is submitted, in this process, so it cannot miss a read.)"""
    from clipkit.inputs import workers

    submitted, handed_back, in_flight = [0], [0], []

    class CountingPool(workers.ProcessPoolExecutor):
        def submit(self, *args, **kwargs):
            submitted[0] += 1
            in_flight.append(submitted[0] - handed_back[0])
            return super().submit(*args, **kwargs)

    monkeypatch.setattr(workers, "ProcessPoolExecutor", CountingPool)
    made = []
    for batch in ordered_batches(_Squares(), list, _batches(1, 40), workers=2, ahead=3):
        made.append(batch[0][0])
        handed_back[0] += 1
    assert made == [i * i for i in range(40)]
    assert max(in_flight) == 3 and len(in_flight) == 40


class _Settings:
    """Item i: the worker's Ctrl-C disposition and its count of frozen objects."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> tuple[bool, int]:
        return signal.getsignal(signal.SIGINT) == signal.SIG_IGN, gc.get_freeze_count()


def test_workers_leave_ctrl_c_to_the_main_process_and_share_its_pages():
    """(Priority and SIGTERM: test_embed's test of both runtimes' decode workers.)"""
    made = ordered_batches(_Settings(), list, _batches(1, 4), workers=2, ahead=2)
    settings = [item for batch in made for item in batch]
    assert all(ignores for ignores, _ in settings)
    assert all(frozen > 0 for _, frozen in settings)  # frozen when they forked
    assert gc.get_freeze_count() == 0  # and the main process unfroze its own


class _Dies:
    def __len__(self) -> int:
        return 10

    def __getitem__(self, index: int) -> int:
        if index == 5:
            os._exit(3)  # killed mid-batch: out of memory, say
        return index


def test_a_worker_that_dies_fails_the_run_instead_of_hanging_it():
    with pytest.raises(BrokenProcessPool):
        list(ordered_batches(_Dies(), list, _batches(1, 10), workers=2, ahead=2))


def test_an_early_stop_ends_the_workers():
    # Processes an earlier test of this worker left to end on their own are not the stream's.
    before = set(multiprocessing.active_children())
    stream = ordered_batches(_Squares(), list, _batches(1, 100), workers=2, ahead=4)
    next(stream)
    workers = set(multiprocessing.active_children()) - before
    assert len(workers) == 2
    stream.close()
    for worker in workers:  # each exits by itself once told to stop; a worker left running hangs
        worker.join()  # here until pytest-timeout fails the test with this stack
    assert set(multiprocessing.active_children()) <= before  # and none took their place


# A command (this interpreter) whose decode worker holds WRITE_FD open and blocks for good.
ORPHANED_WORKER = """
import multiprocessing, os, signal, sys
from clipkit.inputs.pipeline import decode_worker_init

def work(ready):
    decode_worker_init(0)
    ready.send("started")
    signal.pause()

if __name__ == "__main__":
    mine, theirs = multiprocessing.Pipe()
    worker = multiprocessing.get_context("fork").Process(target=work, args=(theirs,))
    worker.start()
    assert mine.recv() == "started"
    os.close(int(sys.argv[1]))  # from here on the worker alone holds the pipe's write end
    print("ready", flush=True)
    signal.pause()
"""


@pytest.mark.e2e  # two real processes, one killed
def test_decode_workers_end_when_their_command_is_killed(tmp_path):
    """D9 of issue #37: `kill -9` of embed left its decode workers alive for good (parent
    pid 1, blocked on a pipe). The worker's end closes the last write end of a pipe: reading
    it returns at once, where a worker that lives on would block the read for good."""
    import select
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    command = subprocess.Popen(
        [sys.executable, "-c", ORPHANED_WORKER, str(write_end)],
        pass_fds=(write_end,),
        stdout=subprocess.PIPE,
        text=True,
    )
    os.close(write_end)
    try:
        assert command.stdout.readline().strip() == "ready"
        command.kill()
        command.wait()
        readable, _, _ = select.select([read_end], [], [], 60)  # a bound for a hang, not a wait
        assert readable and os.read(read_end, 1) == b"", "the worker outlived its command"
    finally:
        os.close(read_end)
