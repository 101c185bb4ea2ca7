"""Evaluation metrics as torchmetrics ``Metric`` leaves (streaming states that merge across
processes) and their pure-tensor helpers. The pipeline that runs explainers and attacks and feeds
these metrics is :mod:`consistcam.evaluation`."""

from __future__ import annotations

import importlib
import warnings

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

# Names that lived here before the pipeline moved to consistcam.evaluation. Resolved on first use
# only, so importing the metrics never imports the pipeline (and with it attack and consistency).
_MOVED = frozenset({"evaluate_model", "background_reliance", "PROTOCOLS", "object_masks", "heatmap_equivariance",
                    "attack_images", "random_crop_flip", "apply_crop_flip", "RELIANCE_VARIANTS"})


def __getattr__(name: str):
    if name in _MOVED:
        warnings.warn(f"consistcam.metrics.{name} moved to consistcam.evaluation.{name}", DeprecationWarning,
                      stacklevel=2)
        return getattr(importlib.import_module("consistcam.evaluation"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
