"""Evaluation metrics as torchmetrics ``Metric`` leaves (streaming states that merge across
processes) and their pure-tensor helpers: they take tensors only (heatmaps, masks, curves,
probabilities, predictions), never a model. The pipeline that runs explainers, attacks and the
faithfulness forwards and feeds these metrics is :mod:`consistcam.evaluation`."""

from __future__ import annotations

from consistcam.metrics.faithfulness import (
    ConfidenceChange,
    InsertionDeletion,
    curve_auc,
    drop_and_increase,
    pixel_ranks,
    top_fraction_mask,
)
from consistcam.metrics.groups import ALIGNMENT, GroupAccuracy, alignment, group_report
from consistcam.metrics.localization import EnergyPointingGame, MaskIoU, MeanMetric, PointingGame, energy_inside
from consistcam.metrics.robustness import ATTACKS, DEFAULT_EPSILONS, AdversarialAccuracy, attack_key

__all__ = [
    "ALIGNMENT",
    "ATTACKS",
    "DEFAULT_EPSILONS",
    "AdversarialAccuracy",
    "ConfidenceChange",
    "EnergyPointingGame",
    "GroupAccuracy",
    "InsertionDeletion",
    "MaskIoU",
    "MeanMetric",
    "PointingGame",
    "alignment",
    "attack_key",
    "curve_auc",
    "drop_and_increase",
    "energy_inside",
    "group_report",
    "pixel_ranks",
    "top_fraction_mask",
]
