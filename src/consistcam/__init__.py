"""consistcam: image classifiers whose visual explanations can be trusted."""

from consistcam.attack import masked_fgsm, masked_pgd
from consistcam.consistency import (
    ECL,
    ConsistencyConfig,
    ECLConfig,
    ExecutionConfig,
    WeightConfig,
    explanation_consistency,
    score_dataset,
)
from consistcam.data.ids import WithIds
from consistcam.explain import explain, list_explainers, register_explainer
from consistcam.models import create, list_models

__version__ = "0.1.0"
__all__ = ["ECL", "ConsistencyConfig", "ECLConfig", "ExecutionConfig", "WeightConfig", "WithIds", "create", "explain",
           "explanation_consistency", "list_explainers", "list_models", "masked_fgsm", "masked_pgd",
           "register_explainer", "score_dataset"]
