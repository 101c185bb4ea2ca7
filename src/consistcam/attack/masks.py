"""Foreground masks: which pixels the semantic-preserving attack must leave untouched.

All builders return a float mask (N, 1, H, W) with 1 on the foreground and 0 on the background.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

MASK_SOURCES = ("heatmap", "boxes", "mask", "gt", "none")


def dilate(mask: Tensor, pixels: int) -> Tensor:
    """Grow the foreground by ``pixels`` in every direction (square structuring element)."""
    if pixels <= 0:
        return mask
    return F.max_pool2d(mask, kernel_size=2 * pixels + 1, stride=1, padding=pixels)


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


def mask_from_boxes(boxes: Sequence[Tensor] | Tensor, size: tuple[int, int], device=None) -> Tensor:
    """Union of each image's boxes (x0, y0, x1, y1 in pixels, x1/y1 exclusive) as a mask.

    ``boxes`` is a list of (K_i, 4) tensors, or a padded (N, K, 4) tensor whose padding rows are NaN.
    Note the axis order: x indexes columns (width), y rows (height).
    """
    h, w = size
    if isinstance(boxes, Tensor):
        if boxes.dim() != 3 or boxes.shape[-1] != 4:
            raise ValueError(f"boxes must be (N, K, 4) or a list of (K, 4), got {tuple(boxes.shape)}")
        padded = boxes.float()
    else:
        n_max = max((len(b) for b in boxes), default=0)
        dev = device if device is not None else (boxes[0].device if len(boxes) else None)
        padded = torch.full((len(boxes), max(n_max, 1), 4), float("nan"), device=dev)
        for i, b in enumerate(boxes):
            b = torch.as_tensor(b, dtype=torch.float32, device=dev).reshape(-1, 4)
            padded[i, : len(b)] = b
    dev = padded.device
    ys = torch.arange(h, device=dev, dtype=torch.float32)[None, None, :, None] + 0.5
    xs = torch.arange(w, device=dev, dtype=torch.float32)[None, None, None, :] + 0.5
    x0, y0, x1, y1 = (padded[..., i][..., None, None] for i in range(4))
    inside = (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)  # NaN rows compare False
    return inside.any(1, keepdim=True).float()


def mask_from_pixels(mask: Tensor) -> Tensor:
    """Binarise a pixel mask given as (N, H, W) or (N, 1, H, W), bool or {0, 1}/[0, 1] values."""
    if mask.dim() == 3:
        mask = mask[:, None]
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must be (N, H, W) or (N, 1, H, W), got {tuple(mask.shape)}")
    return (mask > 0.5).float() if mask.dtype.is_floating_point else (mask != 0).float()


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
        return dilate(mask_from_pixels(masks).to(images.device), dilation)
    if source in ("boxes", "gt") and boxes is not None:
        return dilate(mask_from_boxes(boxes, (h, w), images.device), dilation)
    if source in ("mask", "boxes", "gt"):
        raise ValueError(f"mask source {source!r} needs ground-truth {'masks' if source == 'mask' else 'boxes'}; "
                         "this data set provides none (use mask='heatmap')")
    raise ValueError(f"unknown mask source {source!r}; known: {', '.join(MASK_SOURCES)}")
