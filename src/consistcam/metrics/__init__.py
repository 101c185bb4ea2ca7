"""Evaluation metrics (torchmetrics-style streaming states) and the evaluation pass."""

from consistcam.metrics.evaluate import evaluate_model, object_masks
from consistcam.metrics.localization import EnergyPointingGame, MaskIoU, MeanMetric, PointingGame

__all__ = ["EnergyPointingGame", "MaskIoU", "MeanMetric", "PointingGame", "evaluate_model", "object_masks"]
