"""torch.distributed plumbing: one object answers "who am I" and does the few collectives.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) :func:`setup` starts a process group
(NCCL on GPUs, gloo on CPUs); otherwise it returns a single-process stand-in whose collectives are
no-ops, so the training loop never branches on whether it is distributed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Dist:
    """This process's place in the job. ``world == 1`` means no process group."""

    world: int = 1
    rank: int = 0
    local_rank: int = 0
    backend: str | None = None

    @classmethod
    def from_env(cls) -> Dist:
        """This process's place as torchrun's environment describes it (no process group)."""
        world = env_world()
        if world <= 1:
            return cls()
        return cls(
            world=world,
            rank=int(os.environ.get("RANK", "0")),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        )

    @property
    def main(self) -> bool:
        """Rank 0: the only process that writes files and prints."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def sum(self, values: list[float], device: torch.device | str = "cpu") -> list[float]:
        """Element-wise sum over ranks (float64 on the wire)."""
        if not self.active:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        return t.cpu().tolist()

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        box = [obj if self.main else None]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def shutdown(self) -> None:
        if self.active and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()


def env_world() -> int:
    """The number of processes torchrun started (1 when not under torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def setup(device: str) -> Dist:
    """Join the torchrun job described by ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``, if any.

    Args:
        device: the resolved device type ("cpu" or "cuda"); it picks the backend.
    """
    world = env_world()
    if world <= 1:
        return Dist()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device == "cuda" else "gloo"
    if not torch.distributed.is_initialized():
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        torch.distributed.init_process_group(backend=backend)
    return Dist(world=world, rank=rank, local_rank=local_rank, backend=backend)
