"""Evaluation metrics (torchmetrics-style streaming states) and the evaluation pass."""

from consistcam.metrics.background import RELIANCE_VARIANTS, background_reliance
from consistcam.metrics.equivariance import apply_crop_flip, heatmap_equivariance, random_crop_flip
from consistcam.metrics.evaluate import PROTOCOLS, evaluate_model, object_masks
from consistcam.metrics.faithfulness import (
    ConfidenceChange,
    InsertionDeletion,
    confidence_change,
    insertion_deletion,
    top_fraction_mask,
)
from consistcam.metrics.localization import EnergyPointingGame, MaskIoU, MeanMetric, PointingGame, energy_inside
from consistcam.metrics.robustness import ATTACKS, DEFAULT_EPSILONS, AdversarialAccuracy, attack_images

__all__ = [
    "ATTACKS",
    "DEFAULT_EPSILONS",
    "PROTOCOLS",
    "RELIANCE_VARIANTS",
    "AdversarialAccuracy",
    "ConfidenceChange",
    "EnergyPointingGame",
    "InsertionDeletion",
    "MaskIoU",
    "MeanMetric",
    "PointingGame",
    "apply_crop_flip",
    "attack_images",
    "background_reliance",
    "confidence_change",
    "energy_inside",
    "evaluate_model",
    "heatmap_equivariance",
    "insertion_deletion",
    "object_masks",
    "random_crop_flip",
    "top_fraction_mask",
]
