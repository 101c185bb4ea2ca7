"""Multi-process training with PyTorch DDP, launched by ``torchrun`` (one process per GPU or CPU slot).

``consistcam train`` alone is one process. Under ``torchrun`` (``WORLD_SIZE`` > 1 in the
environment) the trainer joins the process group (NCCL on CUDA, gloo on the CPU), wraps the model
in ``DistributedDataParallel``, splits every global batch across the ranks, shards the per-epoch
evaluation and the methods' passes over the training set, and lets rank 0 alone write files.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

from consistcam.utils import DistInfo


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
