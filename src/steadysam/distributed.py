"""The torch.distributed process group of a torchrun launch, for evaluation and training alike.

torchrun tells each process its place in ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``. Under it
(``WORLD_SIZE`` > 1) :func:`init_distributed` joins the process group: nccl when the processes
compute on CUDA (each on GPU ``LOCAL_RANK``), gloo otherwise. Without it, nothing is set up and
torch is not even imported, so single-process evaluation stays torch-free until a model is built.
"""

from __future__ import annotations

import datetime
import functools
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def torchrun_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) without it."""
    return (
        int(os.environ.get("RANK", "0")),
        int(os.environ.get("WORLD_SIZE", "1")),
        int(os.environ.get("LOCAL_RANK", "0")),
    )


def wants_cuda(device: str | None) -> bool:
    """Whether a process asked for ``device`` computes on CUDA.

    Arguments:
        device: ``None`` or ``"auto"`` (CUDA when available), or a device name (``cpu``,
            ``cuda``, ``cuda:1``, ``mps``, ...).
    """
    if device is None or device == "auto":
        import torch

        return torch.cuda.is_available()
    return device.startswith("cuda")


@dataclass
class Dist:
    """This process's place in the run, and the collectives the runs use (no-ops alone).

    Arguments:
        rank: this process's rank (0 alone).
        world: the number of processes (1 alone).
        local_rank: this process's rank on its machine (its GPU index under torchrun).
        device_request: the device the run was asked for (see :func:`wants_cuda`).
        owns_group: whether :func:`init_distributed` created the process group, so that
            :meth:`close` destroys it (a group someone else made is left alone).
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device_request: str | None = None
    owns_group: bool = False

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes shared files and prints."""
        return self.rank == 0

    @functools.cached_property
    def device(self) -> torch.device:
        """The device this process computes on: ``cuda:<local_rank>`` when CUDA is wanted,
        else the CPU."""
        import torch

        return torch.device(f"cuda:{self.local_rank}" if wants_cuda(self.device_request) else "cpu")

    def barrier(self) -> None:
        """Wait for every process (nothing to wait for alone)."""
        if self.world > 1:
            import torch.distributed

            torch.distributed.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` (picklable) on every process."""
        if self.world <= 1:
            return obj
        import torch.distributed

        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        """Destroy the process group if :func:`init_distributed` created it."""
        if self.owns_group:
            import torch.distributed

            torch.distributed.destroy_process_group()
            self.owns_group = False


def init_distributed(device: str | None = None, timeout: datetime.timedelta | None = None) -> Dist:
    """Join torchrun's process group (creating it unless it exists); alone, set nothing up.

    Arguments:
        device: what the run computes on (see :func:`wants_cuda`): CUDA processes use nccl and
            each takes GPU ``LOCAL_RANK`` as its current device; others use gloo.
        timeout: how long collectives wait for the slowest process (torch's default if None).
    """
    _, world, local = torchrun_env()
    if world <= 1:
        return Dist(0, 1, local, device)
    import torch
    import torch.distributed as dist

    cuda = wants_cuda(device)
    if cuda:
        torch.cuda.set_device(local)
    owns = not dist.is_initialized()
    if owns:
        extra = {} if timeout is None else {"timeout": timeout}
        dist.init_process_group("nccl" if cuda else "gloo", **extra)
    return Dist(dist.get_rank(), dist.get_world_size(), local, device, owns)
