"""Run under torchrun by tests/train/test_distributed.py: train, then save this rank's ECL weights."""

from __future__ import annotations

import sys

import torch.distributed as dist
from safetensors.torch import save_file

from consistcam.train import TrainConfig, Trainer

out, epochs = sys.argv[1], int(sys.argv[2])
cfg = TrainConfig.from_dict({"data": "demo:n=64,n_test=32,size=16", "method": "ecl", "epochs": epochs,
                             "batch_size": 16, "eval_batch_size": 32, "out": out, "device": "cpu",
                             "ecl": {"warmup": 0, "update_every": 1, "score_batch_size": 16,
                                     "consistency": {"steps": 1, "random_start": False}}})
trainer = Trainer.from_config(cfg, progress=False)
trainer.fit()
save_file({"weights": trainer.method.weights.contiguous()}, f"{out}/weights_rank{trainer.dist.rank}.safetensors")
if dist.is_initialized():
    dist.barrier()
    dist.destroy_process_group()
