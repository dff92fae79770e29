"""Scale-out under ``torchrun``: which rank this is, which samples it audits, and barriers.

The same ``camplug audit`` command runs unchanged under ``torchrun --nproc-per-node N``: each
rank audits its share of the pending samples (``torch.utils.data.DistributedSampler`` without
its padding, so no sample is audited twice), writes its rows to its own SQLite shard file,
and rank 0 merges the shards into the main results file and writes the report.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job. ``owns_group``: we initialized the process group (and
    destroy it in :meth:`close`)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.is_distributed:
            dist.barrier()

    def broadcast(self, message: str | None) -> str | None:
        """Rank 0's ``message`` on every rank (a collective: every rank must call it)."""
        if not self.is_distributed:
            return message
        box = [message]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def setup() -> DistContext:
    """Join the process group described by torchrun's environment (``WORLD_SIZE``, ``RANK``,
    ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``), or use the one already initialized.
    Backend: NCCL when CUDA is available, gloo otherwise. A plain process is rank 0 of 1."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(),
                           int(os.environ.get("LOCAL_RANK", 0)))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, owns_group=True)


def shard(indices: Sequence[int], rank: int, world_size: int) -> list[int]:
    """The part of ``indices`` that ``rank`` audits: ``DistributedSampler``'s assignment
    (``indices[rank::world_size]``, order kept) minus the padding it appends to make the shares
    equal, so every index goes to exactly one rank."""
    if world_size <= 1:
        return list(indices)
    sampler = DistributedSampler(
        range(len(indices)), num_replicas=world_size, rank=rank, shuffle=False, drop_last=False
    )
    own = len(range(rank, len(indices), world_size))  # the real (unpadded) share
    positions = list(sampler)[:own]  # DistributedSampler appends its padding at the end
    return [indices[p] for p in positions]
