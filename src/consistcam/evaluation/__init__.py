"""Evaluation as its own step: the streaming pass that runs explainers and attacks and feeds the
:mod:`consistcam.metrics` leaves, the faithfulness forwards (insertion/deletion curves, masked
confidences), background reliance, equivariance, and ``evaluate_run``, which evaluates a run
folder and saves everything its report shows."""

from consistcam.evaluation.background import RELIANCE_VARIANTS, background_reliance
from consistcam.evaluation.config import EvaluationConfig
from consistcam.evaluation.equivariance import apply_crop_flip, heatmap_equivariance, random_crop_flip
from consistcam.evaluation.examples import RANKINGS, ExtremeExamples
from consistcam.evaluation.faithfulness import (
    FORWARD_PIXELS,
    class_probability,
    confidence_change,
    insertion_deletion,
    insertion_deletion_curves,
    masked_probability,
)
from consistcam.evaluation.pipeline import PROTOCOLS, evaluate_model, object_masks, stream_seeds
from consistcam.evaluation.robustness import attack_images
from consistcam.evaluation.run import evaluate_run

__all__ = [
    "FORWARD_PIXELS",
    "PROTOCOLS",
    "RANKINGS",
    "RELIANCE_VARIANTS",
    "EvaluationConfig",
    "ExtremeExamples",
    "apply_crop_flip",
    "attack_images",
    "background_reliance",
    "class_probability",
    "confidence_change",
    "evaluate_model",
    "evaluate_run",
    "heatmap_equivariance",
    "insertion_deletion",
    "insertion_deletion_curves",
    "masked_probability",
    "object_masks",
    "random_crop_flip",
    "stream_seeds",
]
