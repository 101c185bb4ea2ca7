"""A third-party training method outside the package, registered only through the entry-point group
``consistcam.strategies`` (see tests/train/test_plugins.py)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from consistcam.config import option
from consistcam.run.layout import epoch_file
from consistcam.train.methods import Method, StepOutput


@dataclass
class ScaledERMConfig:
    factor: float = option(1.0, "loss multiplier", gt=0.0)


class ScaledERM(Method):
    """ERM with its loss scaled by a constant; it keeps per-sample scores of every epoch in a folder
    of its own, as ECL keeps its scoring rounds (the report shows them)."""

    Config = ScaledERMConfig
    config: ScaledERMConfig
    output_dir = "scaled_erm"

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        scores = torch.linspace(0, 1, self.ctx.num_samples)
        self.ctx.save_tensors(f"{self.output_dir}/{epoch_file(epoch)}", {"E": scores, "weights": 1 - scores})
        return {}

    def loss(self, batch: dict) -> StepOutput:
        logits = self.ctx.model(batch["image"])
        loss = self.config.factor * self.ctx.task.loss(logits, batch["label"])
        return StepOutput(loss, logits, {"factor": self.config.factor})


class ClashingERM(ScaledERM):
    output_dir = "eval"  # the evaluation's folder


NOT_A_STRATEGY = object()
