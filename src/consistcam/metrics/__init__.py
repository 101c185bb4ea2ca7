"""Evaluation metrics as torchmetrics ``Metric`` leaves (streaming states that merge across
processes) and their pure-tensor helpers. The pipeline that runs explainers and attacks and feeds
these metrics is :mod:`consistcam.evaluation`."""

from __future__ import annotations

from consistcam.metrics.faithfulness import (
    ConfidenceChange,
    InsertionDeletion,
    confidence_change,
    insertion_deletion,
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
    "confidence_change",
    "energy_inside",
    "group_report",
    "insertion_deletion",
    "top_fraction_mask",
]
