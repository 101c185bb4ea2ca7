"""Background-only (semantic-preserving) adversarial attacks and foreground-mask builders."""

from consistcam.attack.masks import (
    MASK_SOURCES,
    dilate,
    foreground_mask,
    mask_from_boxes,
    mask_from_heatmap,
    mask_from_pixels,
)
from consistcam.attack.pgd import background_noise, masked_attack, masked_fgsm, masked_pgd

__all__ = [
    "MASK_SOURCES",
    "background_noise",
    "dilate",
    "foreground_mask",
    "mask_from_boxes",
    "mask_from_heatmap",
    "mask_from_pixels",
    "masked_attack",
    "masked_fgsm",
    "masked_pgd",
]
