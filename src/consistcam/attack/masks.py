"""Foreground masks: which pixels the semantic-preserving attack must leave untouched.

All builders return a float mask (N, 1, H, W) with 1 on the foreground and 0 on the background.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from consistcam.data.masks import check_boxes, dilate, mask_from_boxes, mask_from_pixels

MASK_SOURCES = ("heatmap", "boxes", "mask", "gt", "none")
__all__ = ["MASK_SOURCES", "dilate", "foreground_mask", "mask_from_boxes", "mask_from_heatmap", "mask_from_pixels"]


def mask_from_heatmap(heatmaps: Tensor, tau: float = 0.5, top_q: float | None = None, dilation: int = 0) -> Tensor:
    """Foreground = heatmap >= ``tau`` (maps in [0, 1]), or the ``top_q`` fraction of pixels with the
    highest values (exactly ceil(q·H·W) pixels per image, ties broken by position)."""
    if heatmaps.dim() != 4 or heatmaps.shape[1] != 1:
        raise ValueError(f"heatmaps must be (N, 1, H, W), got {tuple(heatmaps.shape)}")
    if top_q is None:
        if not 0.0 <= tau <= 1.0:
            raise ValueError(f"tau must be in [0, 1], got {tau}")
        mask = (heatmaps >= tau).to(heatmaps.dtype)
    else:
        if not 0.0 < top_q <= 1.0:
            raise ValueError(f"top_q must be in (0, 1], got {top_q}")
        flat = heatmaps.flatten(1)
        k = max(1, int(torch.tensor(top_q * flat.shape[1]).ceil().item()))
        idx = flat.topk(k, dim=1).indices
        mask = torch.zeros_like(flat).scatter_(1, idx, 1.0).view_as(heatmaps)
    return dilate(mask, dilation)


def foreground_mask(
    source: str,
    images: Tensor,
    *,
    heatmaps: Tensor | None = None,
    boxes: Sequence[Tensor] | Tensor | None = None,
    masks: Tensor | None = None,
    tau: float = 0.5,
    top_q: float | None = None,
    dilation: int = 0,
) -> Tensor:
    """Build the foreground mask from ``source`` (one of :data:`MASK_SOURCES`).

    ``gt`` uses the pixel mask when given, else the boxes. ``none`` has no foreground: the attack
    may change every pixel (an ablation)."""
    n, _, h, w = images.shape
    if source == "heatmap":
        if heatmaps is None:
            raise ValueError("mask source 'heatmap' needs heatmaps")
        return mask_from_heatmap(heatmaps, tau, top_q, dilation)
    if source == "none":
        return torch.zeros(n, 1, h, w, device=images.device, dtype=images.dtype)
    if source in ("mask", "gt") and masks is not None:
        pixels = mask_from_pixels(masks)
        if pixels.shape[0] != n or pixels.shape[-2:] != images.shape[-2:]:
            raise ValueError(f"masks {tuple(masks.shape)} do not match images {tuple(images.shape)}")
        return dilate(pixels.to(images.device), dilation)
    if source in ("boxes", "gt") and boxes is not None:
        check_boxes(boxes, n)
        return dilate(mask_from_boxes(boxes, (h, w), images.device), dilation)
    if source in ("mask", "boxes", "gt"):
        raise ValueError(f"mask source {source!r} needs ground-truth {'masks' if source == 'mask' else 'boxes'}; "
                         "this data set provides none (use mask='heatmap')")
    raise ValueError(f"unknown mask source {source!r}; known: {', '.join(MASK_SOURCES)}")
