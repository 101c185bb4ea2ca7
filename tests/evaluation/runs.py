"""A tiny saved run folder (model.safetensors + config.yaml on the demo data) for evaluate_run and
report tests: seconds to build, no training."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from consistcam.models import MODELS, create
from tests.helpers import TinyNet

ARCH = "tests_tinynet"
if ARCH not in MODELS:  # a plug-in model, as a user would register one
    MODELS.add(ARCH, lambda num_classes: TinyNet(num_classes))


def make_run(root: Path, seed: int = 0) -> Path:
    from consistcam.train import save_model

    run = root / "run"
    run.mkdir(parents=True)
    torch.manual_seed(seed)
    save_model(run / "model.safetensors", create(ARCH, 4), ARCH, 4, False, ["disk", "square", "triangle", "cross"],
               16)
    (run / "config.yaml").write_text(yaml.safe_dump({"data": "demo:size=16"}))
    return run


# what the tests evaluate: one split, 24 images in two batches, the cheap protocols
QUICK = dict(splits=("test",), subset=24, batch_size=12, protocols=("localization", "consistency", "equivariance"),
             background=False, faithfulness_steps=2, examples=3, progress=False)
