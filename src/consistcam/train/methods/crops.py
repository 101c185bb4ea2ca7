"""Second views drawn exactly as torchvision's ``RandomResizedCrop.get_params`` draws them, batched.

CGC and ExCon make their random views with ``RandomResizedCrop``: up to 10 tries of an area fraction
uniform in ``scale`` and a log-uniform aspect ratio, rounded to whole pixels and rejected when wider or
taller than the image; the first accepted box is placed uniformly, and after 10 rejections the
largest centred box within ``ratio`` is used. Clamping an oversized box to the image instead (as
``consistcam.data.geometry.random_crop_flip`` does) gives another distribution: with scale (0.08, 1)
the mean area is 0.534 instead of 0.478 and 14 % of the crops span the full width or height instead
of 1 %. The boxes come out as the (n, 5) transforms of :func:`consistcam.data.geometry.apply_crop_flip`
(whole-pixel edges as image fractions, flip flag), so the crop of an image and of its map is the same.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["TRIES", "check_crop_scale", "resized_crop_flip"]

TRIES = 10  # torchvision's RandomResizedCrop.get_params


def check_crop_scale(scale: tuple[float, float]) -> str | None:
    """Config check of a ``crop_scale`` option: the problem, or None when it is a valid area range."""
    if len(scale) != 2 or not 0.0 < scale[0] <= scale[1] <= 1.0:
        return "expected two area fractions 0 < low <= high <= 1"
    return None


def resized_crop_flip(n: int, size: tuple[int, int], scale: tuple[float, float] = (0.08, 1.0),
                      ratio: tuple[float, float] = (3 / 4, 4 / 3), flip_p: float = 0.5,
                      generator: torch.Generator | None = None, device=None) -> Tensor:
    """(n, 5) crop-and-flip transforms of an image of ``size`` (H, W) pixels: x0, y0, x1, y1 as fractions
    of the width and height (whole pixels) and a flip flag, with ``RandomResizedCrop``'s distribution.

    All tries are drawn at once (a few unused random numbers per image instead of a Python loop).
    """
    height, width = size
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive (H, W) pixels, got {size}")
    u = torch.rand(n, 2 * TRIES + 3, generator=generator, device=device)  # float32: MPS has no float64
    area = height * width * (scale[0] + (scale[1] - scale[0]) * u[:, :TRIES])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = (log_lo + (log_hi - log_lo) * u[:, TRIES:2 * TRIES]).exp()
    w = (area * aspect).sqrt().round()  # torchvision: int(round(math.sqrt(...)))
    h = (area / aspect).sqrt().round()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    # index of the first accepted try: the number of rejections before it (clamped when all were rejected)
    first = (ok.cumsum(1) == 0).sum(1, keepdim=True).clamp(max=TRIES - 1)
    w, h, accepted = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0], ok.any(1)
    # fallback after 10 rejections: the whole image, or its largest centred box within the ratio range
    if width / height < min(ratio):
        fw, fh = width, round(width / min(ratio))
    elif width / height > max(ratio):
        fw, fh = round(height * max(ratio)), height
    else:
        fw, fh = width, height
    w, h = torch.where(accepted, w, float(fw)), torch.where(accepted, h, float(fh))
    # placement: torch.randint(0, H - h + 1) and (0, W - w + 1), i.e. uniform whole-pixel offsets
    top = torch.where(accepted, (u[:, -3] * (height - h + 1)).floor().clamp(max=height - h), (height - h) // 2)
    left = torch.where(accepted, (u[:, -2] * (width - w + 1)).floor().clamp(max=width - w), (width - w) // 2)
    flip = (u[:, -1] < flip_p).float()
    boxes = torch.stack([left / width, top / height, (left + w) / width, (top + h) / height, flip], 1)
    return boxes
