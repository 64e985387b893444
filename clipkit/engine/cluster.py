"""Ray: connecting to a cluster (or starting one on this machine), and a pool of actors that
runs units of work, each until it succeeds once.

A unit is whatever a command hands out (an output shard's worth of inputs, an index part);
a worker is a plain class of the command's, which this module makes a Ray actor: built once
per actor (a model loaded once), then called once per unit. A unit whose worker raises, or
whose actor's process or node dies, is given again, up to ``TRIES`` times in all; a dead
actor is replaced by a new one. The units' results come back to the driver, which alone
writes what sums them up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from clipkit.config import ENV_RAY_ADDRESS
from clipkit.errors import ClipkitError, UsageError

INSTALL = 'pip install "clipkit[ray]"'
TRIES = 3  # a unit's tries in all, whatever failed (the worker's code, its process, its node)


class UnitFailed(ClipkitError):
    """Units that failed every try (the others' results are in)."""


def require() -> ModuleType:
    """Ray, imported.

    Raises:
        UsageError: Ray is not installed (exit 2, naming the install command).
    """
    try:
        import ray
    except ImportError:
        raise UsageError(
            "--engine ray needs Ray, which is not installed.", f"Install it: {INSTALL}"
        ) from None
    return ray


@dataclass(frozen=True)
class Cluster:
    """What the connected cluster offers (Ray's total resources)."""

    address: str  # "" for an instance this command started
    cpus: float
    gpus: float
    nodes: int


@contextlib.contextmanager
def connected(address: str | None = None) -> Iterator[Cluster]:
    """Connected to the Ray cluster at ``address`` (else ``$RAY_ADDRESS``), or to one started
    on this machine for the block (no dashboard, Ray's own logs kept quiet); an instance this
    process has already (a test's, a notebook's) is used as it is."""
    ray = require()
    started = False
    stack = contextlib.ExitStack()
    if not ray.is_initialized():
        address = address or os.environ.get(ENV_RAY_ADDRESS) or None
        options: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False}
        if address is None:
            options["include_dashboard"] = False
        try:
            ray.init(address=address, **options)
        except ConnectionError as error:
            raise UsageError(
                f"Cannot reach the Ray cluster at {address}: {error}.",
                "Start it with `ray start --head` on its head node, or leave out "
                f"--ray-address (and ${ENV_RAY_ADDRESS}) to run on this machine.",
            ) from None
        started = True
    try:
        # Ray prints what it reports (a worker that died, a task retried) on stdout, where a
        # command's own output goes: on stderr it stays out of --format json and pipes.
        stack.enter_context(contextlib.redirect_stdout(sys.stderr))
        resources = ray.cluster_resources()
        yield Cluster(
            address=address or "",
            cpus=float(resources.get("CPU", 0)),
            gpus=float(resources.get("GPU", 0)),
            nodes=len([node for node in ray.nodes() if node.get("Alive")]),
        )
    finally:
        stack.close()
        if started:
            ray.shutdown()


@dataclass(frozen=True)
class Pool:
    """How many actors, and what each one asks of its node."""

    workers: int
    cpus: float
    gpus: float


# What a CPU actor reserves of its node: half a CPU, so that a pool of one actor per CPU holds
# half of them in Ray's books and Ray's own tasks always find room (a pool that reserves every
# CPU starves the scheduler).
CPU_ACTOR_SHARE = 0.5


def size_pool(cluster: Cluster, gpus_per_worker: float | None, units: int) -> Pool:
    """GPU actors where the cluster has GPUs (``gpus_per_worker`` each, 1 by default; 0
    asks for CPU actors); else one CPU actor per CPU, each reserving ``CPU_ACTOR_SHARE``.
    Never more actors than units.

    Raises:
        UsageError: GPUs asked of a cluster that has none, or a bad share.
    """
    if gpus_per_worker is not None and not 0 <= gpus_per_worker <= 64:
        raise UsageError("--gpus-per-worker must lie in 0-64.", "e.g. 1, or 0.5 to share one.")
    if gpus_per_worker and not cluster.gpus:
        raise UsageError(
            f"--gpus-per-worker {gpus_per_worker:g}: the Ray cluster has no GPU.",
            "Leave it out to embed on the CPUs, or add GPU nodes to the cluster.",
        )
    if cluster.gpus and gpus_per_worker != 0:
        share = gpus_per_worker or 1.0
        workers = int(cluster.gpus // share)
        return Pool(max(1, min(workers, units)), cpus=1.0, gpus=share)
    workers = max(1, int(cluster.cpus))
    return Pool(max(1, min(workers, units)), cpus=CPU_ACTOR_SHARE, gpus=0.0)


class Actors:
    """A pool of actors of one worker class (see the module's docstring)."""

    def __init__(self, worker: type, arguments: Sequence[Any], pool: Pool) -> None:
        self._ray = require()
        # No restarts nor retries of Ray's own: every failure is one of a unit's TRIES, and
        # an actor that died is replaced here (so none is left behind, restarting).
        self._class = self._ray.remote(
            num_cpus=pool.cpus, num_gpus=pool.gpus, max_restarts=0, max_task_retries=0,
            scheduling_strategy="SPREAD",  # over the nodes
        )(worker)  # fmt: skip
        self._arguments = arguments
        self._actors = [self._new() for _ in range(pool.workers)]

    def ask(self, method: str) -> Any:
        """What one actor's ``method()`` returns (what every one would: the model it loaded)."""
        return self._ray.get(getattr(self._actors[0], method).remote())

    def run_units(self, units: Sequence[Any], on_result: Callable[[int, Any], None]) -> None:
        """``run(unit)`` of every unit on the pool; each result goes to ``on_result(unit's
        position, result)`` as it comes, in the order units finish.

        Raises:
            UnitFailed: units that failed ``TRIES`` times (named, with the last error), after
                every other unit has finished.
        """
        ray = self._ray
        waiting = list(range(len(units)))[::-1]  # popped from the end: in order
        tries = [0] * len(units)
        running: dict[Any, tuple[int, Any]] = {}  # future -> (unit's position, actor)
        failed: list[tuple[int, str]] = []

        def give(actor: Any) -> None:
            if waiting:
                position = waiting.pop()
                tries[position] += 1
                running[actor.run.remote(units[position])] = (position, actor)

        for actor in self._actors:
            give(actor)
        while running:
            [done], _ = ray.wait(list(running), num_returns=1)
            position, actor = running.pop(done)
            try:
                result = ray.get(done)
            except ray.exceptions.RayError as error:  # its code raised, or its actor is gone
                if tries[position] >= TRIES:
                    failed.append((position, _first_line(error)))
                else:
                    waiting.append(position)
                if isinstance(error, ray.exceptions.RayActorError):  # its process is gone
                    actor = self._replace(actor)
                give(actor)
                continue
            on_result(position, result)
            give(actor)
        if failed:
            position, why = failed[0]
            raise UnitFailed(
                f"{len(failed)} unit(s) of work failed {TRIES} times; the first, unit "
                f"{position}: {why}",
                "What the other units wrote is kept: run the command again to retry the rest.",
            )

    def close(self) -> None:
        for actor in self._actors:
            self._ray.kill(actor)

    def _new(self) -> Any:
        return self._class.remote(*self._arguments)

    def _replace(self, dead: Any) -> Any:
        self._ray.kill(dead, no_restart=True)
        fresh = self._new()
        self._actors = [fresh if actor is dead else actor for actor in self._actors]
        return fresh


@contextlib.contextmanager
def actors(worker: type, arguments: Sequence[Any], pool: Pool) -> Iterator[Actors]:
    """``pool.workers`` actors of ``worker(*arguments)`` for the block."""
    started = Actors(worker, arguments, pool)
    try:
        yield started
    finally:
        started.close()


def node_id() -> str:
    """The Ray node this process runs on (in an actor: the node it was placed on)."""
    return str(require().get_runtime_context().get_node_id())


def _first_line(error: BaseException) -> str:
    cause = getattr(error, "cause", None) or error
    return (str(cause).strip().splitlines() or [type(cause).__name__])[-1]
