"""A third-party training method outside the package, registered only through the entry-point group
``consistcam.strategies`` (see tests/train/test_plugins.py)."""

from __future__ import annotations

from dataclasses import dataclass

from consistcam.config import option
from consistcam.train.strategies import StepOutput, Strategy


@dataclass
class ScaledERMConfig:
    factor: float = option(1.0, "loss multiplier", gt=0.0)


class ScaledERM(Strategy):
    """ERM with its loss scaled by a constant."""

    Config = ScaledERMConfig
    config: ScaledERMConfig

    def loss(self, batch: dict) -> StepOutput:
        logits = self.ctx.model(batch["image"])
        loss = self.config.factor * self.ctx.task.loss(logits, batch["label"])
        return StepOutput(loss, logits, {"factor": self.config.factor})


NOT_A_STRATEGY = object()
