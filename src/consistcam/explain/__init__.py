"""Batched class-activation heatmaps: ``explain(model, images, targets, explainer=...)``."""

from consistcam.explain._state import capture
from consistcam.explain.api import explain, list_explainers, normalize_maps
from consistcam.explain.layers import find_target_layer, get_layer, resolve_layer, vit_reshape_transform
from consistcam.explain.methods import METHODS, check_explainer_options
from consistcam.explain.targets import Targets, TargetScore, resolve_targets
from consistcam.models.state import preserved_state

__all__ = [
    "METHODS",
    "TargetScore",
    "Targets",
    "capture",
    "check_explainer_options",
    "explain",
    "find_target_layer",
    "get_layer",
    "list_explainers",
    "normalize_maps",
    "preserved_state",
    "resolve_layer",
    "resolve_targets",
    "vit_reshape_transform",
]
