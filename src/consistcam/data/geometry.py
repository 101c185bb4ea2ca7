"""Batched geometric transforms that move images and anything aligned with them (heatmaps, masks).

One affine grid per image: a random resized crop plus a horizontal flip, drawn as torchvision's
RandomResizedCrop draws it, and replayed exactly on a second tensor (the CGC loss and the
equivariance protocol both need "the same crop of the image and of its heatmap").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["apply_crop_flip", "random_crop_flip"]


def random_crop_flip(n: int, generator: torch.Generator | None = None, scale: tuple[float, float] = (0.3, 1.0),
                     ratio: tuple[float, float] = (3 / 4, 4 / 3), flip_p: float = 0.5, device=None) -> Tensor:
    """(n, 5) transforms: crop box x0, y0, x1, y1 in [0, 1] image fractions and a flip flag, drawn
    as in RandomResizedCrop (area fraction in ``scale``, log-uniform aspect ``ratio``, clipped)."""
    u = torch.rand(n, 5, generator=generator, device=device)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    w = (area * log_r.exp()).sqrt().clamp(max=1.0)
    h = (area / log_r.exp()).sqrt().clamp(max=1.0)
    x0, y0 = (1 - w) * u[:, 2], (1 - h) * u[:, 3]
    return torch.stack([x0, y0, x0 + w, y0 + h, (u[:, 4] < flip_p).float()], 1)


def apply_crop_flip(images: Tensor, transforms: Tensor, mode: str = "bilinear", edges: str = "blend") -> Tensor:
    """Crop each image to its box, resize back to the input size, flip where flagged.

    ``edges="clamp"`` samples only inside the box: the sampling points are clamped to the box's outermost
    pixel centres, so on whole-pixel boxes the result is slicing the box out and resizing it bilinearly
    (``F.interpolate``, torchvision's ``resized_crop``), as CGC's and ExCon's authors make their views,
    in one batched call. ``"blend"`` lets the box's border pixels blend with their outside neighbours
    (the continuous crop, for fractional boxes).
    """
    if edges not in ("blend", "clamp"):
        raise ValueError(f"edges must be 'blend' or 'clamp', got {edges!r}")
    x0, y0, x1, y1, flip = transforms.to(images.device, images.dtype).unbind(1)
    sx = (x1 - x0) * (1 - 2 * flip)  # a flip mirrors the sampling grid
    theta = torch.zeros(len(images), 2, 3, device=images.device, dtype=images.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = sx, x0 + x1 - 1
    theta[:, 1, 1], theta[:, 1, 2] = y1 - y0, y0 + y1 - 1
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    if edges == "clamp":  # [-1, 1] coordinates of the box's first and last pixel centres
        height, width = images.shape[-2:]
        lo = torch.stack([2 * x0 - 1 + 1 / width, 2 * y0 - 1 + 1 / height], 1)[:, None, None]
        hi = torch.stack([2 * x1 - 1 - 1 / width, 2 * y1 - 1 - 1 / height], 1)[:, None, None]
        grid = torch.maximum(torch.minimum(grid, hi), lo)
    return F.grid_sample(images, grid, mode=mode, padding_mode="border", align_corners=False)
