"""Batched class-activation heatmaps: ``explain(model, images, targets, explainer=...)``."""

from consistcam.explain import sise  # noqa: F401  (its import adds "sise" and "ada-sise" to EXPLAINERS)
from consistcam.explain._state import capture
from consistcam.explain.api import explain, list_explainers, normalize_maps
from consistcam.explain.explainers import (
    EXPLAINERS,
    CAMContext,
    Explainer,
    check_explainer_options,
    register_explainer,
)
from consistcam.explain.layers import (
    find_target_layer,
    get_layer,
    last_convolution,
    resolve_layer,
    vit_reshape_transform,
)
from consistcam.explain.targets import Targets, TargetScore, resolve_targets

__all__ = [
    "EXPLAINERS",
    "CAMContext",
    "Explainer",
    "TargetScore",
    "Targets",
    "capture",
    "check_explainer_options",
    "explain",
    "find_target_layer",
    "get_layer",
    "last_convolution",
    "list_explainers",
    "normalize_maps",
    "register_explainer",
    "resolve_layer",
    "resolve_targets",
    "vit_reshape_transform",
]
