"""Explanation consistency E, training weights v = 1 - E, the data-set scoring pass, and ECL's schedule
for any training loop (:class:`ECL`)."""

from consistcam.consistency.config import ConsistencyConfig, ExecutionConfig, WeightConfig
from consistcam.consistency.ecl import ECL, ECLConfig
from consistcam.consistency.score import (
    ConsistencyScores,
    explanation_consistency,
    score_dataset,
    unpack_batch,
)
from consistcam.consistency.similarity import (
    PREDICTION_CONSISTENCIES,
    SIMILARITIES,
    cosine_similarity,
    js_consistency,
    l1_similarity,
    pearson_similarity,
    ratio_consistency,
    ssim_similarity,
    topq_iou_similarity,
)
from consistcam.consistency.weights import consistency_weights

__all__ = [
    "PREDICTION_CONSISTENCIES",
    "SIMILARITIES",
    "ECL",
    "ConsistencyConfig",
    "ConsistencyScores",
    "ECLConfig",
    "ExecutionConfig",
    "WeightConfig",
    "consistency_weights",
    "cosine_similarity",
    "explanation_consistency",
    "js_consistency",
    "l1_similarity",
    "pearson_similarity",
    "ratio_consistency",
    "score_dataset",
    "ssim_similarity",
    "topq_iou_similarity",
    "unpack_batch",
]
