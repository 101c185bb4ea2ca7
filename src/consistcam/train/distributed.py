"""Multi-process training with PyTorch DDP, launched by ``torchrun`` (one process per GPU or CPU slot).

``consistcam train`` alone is one process. Under ``torchrun`` (``WORLD_SIZE`` > 1 in the
environment) the trainer joins the process group (NCCL on CUDA, gloo on the CPU), wraps the model
in ``DistributedDataParallel``, splits every global batch across the ranks, shards the per-epoch
evaluation and the strategies' passes over the training set, and lets rank 0 alone write files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: rank, world size, local rank, and the process group (None: default)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    group: Any = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun describes (idempotent); on CUDA each rank takes its local GPU."""
    if not launched_by_torchrun():
        return DistInfo(), device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank), device


def all_reduce_sum(t: Tensor, info: DistInfo) -> Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=info.group)
    return t


def gather_cat(t: Tensor, info: DistInfo) -> Tensor:
    """Concatenate every rank's tensor along dim 0 (lengths may differ), rank order."""
    if not info.enabled:
        return t
    if t.dtype == torch.bool:  # not every backend gathers bools
        return gather_cat(t.to(torch.uint8), info).bool()
    n = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(info.world_size)]
    dist.all_gather(sizes, n, group=info.group)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t
    parts = [torch.zeros_like(padded) for _ in range(info.world_size)]
    dist.all_gather(parts, padded, group=info.group)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier(group=info.group)


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank (e.g. an error raised on rank 0 only)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=info.group)
    return box[0]
