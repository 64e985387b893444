"""Running under ``torchrun``: rank and world size, process-group set-up, gathering results.

A command started by ``torchrun --nproc_per_node N`` (or multi-node torchrun) finds RANK,
WORLD_SIZE and LOCAL_RANK in its environment; without them it is a world of one and nothing
here touches ``torch.distributed`` (or imports torch: the ONNX runtime embeds without it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class World:
    """This process's place in a (possibly single-process) run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def current_world() -> World:
    """The world described by torchrun's environment variables (a world of one without them)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(
        rank=int(os.environ["RANK"]),
        size=size,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def start(world: World, device: str) -> tuple[str, bool]:
    """Join the process group (NCCL for CUDA, gloo otherwise).

    Returns:
        This rank's device, and whether this call created the group (and so must end it).
    """
    if not world.distributed:
        return device, False
    import torch
    import torch.distributed as dist

    on_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if on_cuda:
        torch.cuda.set_device(world.local_rank)
        device = f"cuda:{world.local_rank}"
    if dist.is_initialized():
        return device, False
    dist.init_process_group(backend="nccl" if on_cuda else "gloo")
    return device, True


def gather(world: World, value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank (picklable values)."""
    if not world.distributed:
        return [value]
    import torch.distributed as dist

    gathered: list[Any] = [None] * world.size
    dist.all_gather_object(gathered, value)
    return gathered


def barrier(world: World) -> None:
    if world.distributed:
        import torch.distributed as dist

        dist.barrier()


def finish(world: World) -> None:
    if not world.distributed:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
