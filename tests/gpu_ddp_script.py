"""Run by tests/test_gpu.py: a short ECL run, either plain or through the trainer's DDP path in one process.

``python gpu_ddp_script.py OUT DEVICE plain|ddp``. With ``ddp`` (launched by ``torchrun --nproc_per_node=1``)
the script joins a process group itself (NCCL on CUDA, gloo on the CPU) and hands the trainer a world of one
that counts as distributed: ``DistInfo.enabled`` is ``world_size > 1``, so without this a one-process
torchrun would skip DistributedDataParallel and every collective. One GPU cannot host two NCCL ranks, so
this is how a one-GPU machine checks the NCCL path (DDP wrap, gradient all-reduce, sharded and gathered
ECL scoring and evaluation, rank 0's broadcasts). Writes OUT/state.safetensors (the trained weights and
ECL's v) and OUT/ddp.json (whether the model was DDP-wrapped, and the backend).
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from consistcam.train import TrainConfig, Trainer
from consistcam.train import trainer as trainer_module
from consistcam.utils import DistInfo


class OneRankWorld(DistInfo):
    """A world of one process that the trainer treats as distributed (DDP and collectives on)."""

    @property
    def enabled(self) -> bool:
        return True


def config(out: str, device: str) -> TrainConfig:
    return TrainConfig.from_dict({
        "data": "demo:n=64,n_test=32,size=16", "method": "ecl", "epochs": 2, "batch_size": 16,
        "eval_batch_size": 32, "out": out, "device": device,
        "ecl": {"warmup": 0, "update_every": 1, "score_batch_size": 32,
                "consistency": {"steps": 1, "random_start": False}}})


def main() -> None:
    out, device, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    if device == "cuda":
        torch.backends.cudnn.allow_tf32 = False  # float32 convolutions and deterministic kernels, so the two
        torch.backends.cudnn.deterministic = True  # runs (separate processes) compare closely
        torch.cuda.set_device(0)
    if mode == "ddp":
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
        world = OneRankWorld(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=0)
        assert world.world_size == 1, "run with torchrun --nproc_per_node=1"
        # the process group joined above; on CUDA the rank's own GPU, as init_distributed gives it
        trainer_module.init_distributed = lambda dev: (world, torch.device("cuda", 0) if dev.type == "cuda" else dev)
    trainer = Trainer.from_config(config(out, device), progress=False)
    trainer.fit()
    state = {f"model.{k}": v.detach().float().cpu().contiguous() for k, v in trainer.module.state_dict().items()
             if v.is_floating_point()}
    state["weights"] = trainer.method.weights.float().cpu().contiguous()
    save_file(state, f"{out}/state.safetensors")
    info = {"ddp": isinstance(trainer.model, torch.nn.parallel.DistributedDataParallel),
            "backend": dist.get_backend() if dist.is_initialized() else None,
            "device": str(trainer.device)}
    with open(f"{out}/ddp.json", "w") as f:
        json.dump(info, f)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
