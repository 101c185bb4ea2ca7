"""Batched class-activation heatmaps: ``explain(model, images, targets, method=...)``."""

from consistcam.explain._state import capture
from consistcam.explain.api import explain, list_explainers, normalize_maps
from consistcam.explain.layers import find_target_layer, get_layer, resolve_layer
from consistcam.explain.methods import METHODS
from consistcam.models.state import preserved_state

__all__ = [
    "METHODS",
    "capture",
    "explain",
    "find_target_layer",
    "get_layer",
    "list_explainers",
    "normalize_maps",
    "preserved_state",
    "resolve_layer",
]
